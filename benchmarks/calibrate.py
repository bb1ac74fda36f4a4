"""``make calibrate``: measure the real engine here and write a simulated-engine profile.

Runs vLLM's ``AsyncLLM`` in-process with the model, sizes and CPU binding of a config's
first application (``config/serve-cpu.yaml`` by default), then:

* **decode**: batches of 1 to 64 requests with short, unique prompts decoding together;
  a request's step time is the time between its first and last token over the tokens
  between them, and the batch's is the median over its requests;
* **context**: a batch of 8 with 1,500-token prompts, the same way: what attention over a
  longer context adds to a decoding step;
* **prefill**: one request at a time with 256 to 2,048 unique prompt tokens and one
  output token: time to first token against prompt length.

A least-squares fit of :class:`~deployments.config.engine_profile.EngineProfile`'s step model
to those points gives ``step_ms``, ``decode_ms_per_seq``, ``decode_ms_per_1k_context``, ``prefill_ms_per_token``
and ``prefill_ms_per_1k_context``; the KV cache's size and the batch limits are read from the
engine. Each point is printed as it is measured; the profile and the raw points are
written (``--out``, and ``benchmarks/results/calibration-<profile>.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from deployments.config import AppConfig
from deployments.config.engine_profile import PROFILES_DIR, EngineProfile, write_profile
from deployments.engine.engine_args import apply_cpu_settings

DECODE_BATCHES = (1, 2, 4, 8, 16, 32, 64)
DECODE_TOKENS = 40
CONTEXT_BATCH, CONTEXT_PROMPT = 8, 1500
PREFILL_LENGTHS = (256, 512, 1024, 2048)
REPEATS = 2


async def _timed(engine: Any, token_ids: list[int], max_tokens: int) -> list[float]:
    """Arrival times (monotonic) of each output token of one request."""
    from vllm import SamplingParams, TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, output_kind=RequestOutputKind.DELTA)
    times: list[float] = []
    async for output in engine.generate(TokensPrompt(prompt_token_ids=token_ids), params, uuid.uuid4().hex):
        now = time.monotonic()
        times += [now] * len(output.outputs[0].token_ids)
    return times


def _prompt(rng: random.Random, length: int) -> list[int]:
    return [rng.randrange(1000, 30000) for _ in range(length)]


async def _decode_step_ms(engine: Any, rng: random.Random, batch: int, prompt_len: int) -> float:
    runs = await asyncio.gather(*(_timed(engine, _prompt(rng, prompt_len), DECODE_TOKENS) for _ in range(batch)))
    # skip the first few tokens: the batch's prefills land in those steps
    return statistics.median((t[-1] - t[4]) / (len(t) - 5) for t in runs) * 1000


async def _prefill_ms(engine: Any, rng: random.Random, length: int) -> float:
    start = time.monotonic()
    times = await _timed(engine, _prompt(rng, length), 1)
    return (times[0] - start) * 1000


def fit(decode: list[dict[str, float]], prefill: list[dict[str, float]]) -> dict[str, float]:
    """The step model's coefficients from the measured points (least squares, none negative)."""
    import numpy as np

    rows = [[1.0, p["batch"], p["batch"] * p["context"] / 1000.0] for p in decode]
    coef, *_ = np.linalg.lstsq(np.array(rows), np.array([p["step_ms"] for p in decode]), rcond=None)
    step_ms, per_seq, per_1k = (max(0.0, float(c)) for c in coef)
    # TTFT of an n-token prompt = one step: step_ms + a * n + c * (0 + 1 + ... + n-1) / 1000
    rows = [[p["tokens"], p["tokens"] * (p["tokens"] - 1) / 2000.0] for p in prefill]
    (per_token, per_1k_position), *_ = np.linalg.lstsq(
        np.array(rows), np.array([p["ttft_ms"] - step_ms for p in prefill]), rcond=None)
    return {"step_ms": round(step_ms, 3), "prefill_ms_per_token": round(max(0.0, float(per_token)), 4),
            "prefill_ms_per_1k_context": round(max(0.0, float(per_1k_position)), 4),
            "decode_ms_per_seq": round(per_seq, 4), "decode_ms_per_1k_context": round(per_1k, 4)}


async def calibrate(config_path: Path, seed: int, cores: str | None = None) -> tuple[EngineProfile, dict[str, Any]]:
    raw = yaml.safe_load(config_path.read_text())
    model = AppConfig.model_validate(raw["applications"][0]["args"]).model
    if model.simulated is not None:
        raise SystemExit(f"{config_path}: its model is simulated; calibrate against a real engine's config")
    if cores is not None:
        model = model.model_copy(update={"cpu": model.cpu.model_copy(update={"threads_bind": [cores]})})
    apply_cpu_settings(model.cpu, 0)
    from vllm import AsyncEngineArgs, AsyncLLMEngine

    started = time.monotonic()
    engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**model.engine_args()))
    print(f"engine up in {time.monotonic() - started:.0f} s", flush=True)
    rng = random.Random(seed)
    decode: list[dict[str, float]] = []
    prefill: list[dict[str, float]] = []
    try:
        await _timed(engine, _prompt(rng, 32), 8)  # warm-up
        short = 16
        for batch in DECODE_BATCHES:
            ms = statistics.median([await _decode_step_ms(engine, rng, batch, short) for _ in range(REPEATS)])
            decode.append({"batch": batch, "context": short + DECODE_TOKENS / 2, "step_ms": ms})
            print(f"decode  batch {batch:3d}, context {short + DECODE_TOKENS // 2:5d}: {ms:7.2f} ms a step", flush=True)
        ms = statistics.median([await _decode_step_ms(engine, rng, CONTEXT_BATCH, CONTEXT_PROMPT)
                                for _ in range(REPEATS)])
        decode.append({"batch": CONTEXT_BATCH, "context": CONTEXT_PROMPT + DECODE_TOKENS / 2, "step_ms": ms})
        print(f"decode  batch {CONTEXT_BATCH:3d}, context {CONTEXT_PROMPT + DECODE_TOKENS // 2:5d}: {ms:7.2f} ms a step",
              flush=True)
        for length in PREFILL_LENGTHS:
            ms = statistics.median([await _prefill_ms(engine, rng, length) for _ in range(REPEATS)])
            prefill.append({"tokens": length, "ttft_ms": ms})
            print(f"prefill {length:5d} tokens: {ms:8.1f} ms to the first token", flush=True)
        cache = engine.vllm_config.cache_config
        scheduler = engine.vllm_config.scheduler_config
        sizes = {"block_size": cache.block_size, "kv_cache_blocks": cache.num_gpu_blocks,
                 "max_num_seqs": scheduler.max_num_seqs, "max_num_batched_tokens": scheduler.max_num_batched_tokens,
                 "max_model_len": engine.model_config.max_model_len}
    finally:
        engine.shutdown()
        del engine
    coefficients = fit(decode, prefill)
    profile = EngineProfile(
        name=f"{model.name}, {model.dtype}, as {config_path} runs it" + (f", on cores {cores}" if cores else ""),
        source="measured",
        notes=f"make calibrate on {time.strftime('%Y-%m-%d')}: {len(decode)} decode and {len(prefill)} prefill "
              "points, least squares (benchmarks/calibrate.py)",
        **sizes, **coefficients)
    return profile, {"decode": decode, "prefill": prefill, "profile": profile.model_dump()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("config/serve-cpu.yaml"))
    parser.add_argument("--out", type=Path, default=PROFILES_DIR / "cpu-smollm2-135m.yaml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cores", help="bind the engine to these cores instead of the config's (e.g. 0: one core, "
                                         "as each of bench-routing's two engine replicas runs)")
    parser.add_argument("--refit", type=Path, help="fit a calibration.json's points again, without an engine")
    args = parser.parse_args()
    if args.refit:
        points = json.loads(args.refit.read_text())
        profile = EngineProfile(**{**points["profile"], **fit(points["decode"], points["prefill"])})
        points["profile"] = profile.model_dump()
        write_profile(profile, args.out)
        args.refit.write_text(json.dumps(points, indent=2))
        print(f"wrote {args.out}:\n{args.out.read_text()}")
        return
    profile, points = asyncio.run(calibrate(args.config, args.seed, args.cores))
    write_profile(profile, args.out)
    results = Path("benchmarks/results")
    results.mkdir(parents=True, exist_ok=True)
    (results / f"calibration-{args.out.stem}.json").write_text(json.dumps(points, indent=2))
    print(f"wrote {args.out}:\n{args.out.read_text()}")


if __name__ == "__main__":
    main()
