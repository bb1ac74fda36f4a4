"""A lean OpenAI streaming load generator (aiohttp) for the served systems, and one
streamed chat turn (:func:`stream_turn`) for the multi-turn benchmarks.

aiohttp rather than httpx: on a 2-core machine the load generator shares the CPU
with the server it measures, and aiohttp spends less of it per streamed event.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable

import aiohttp

from benchmarks.harness.chat_sessions import TurnRecord
from benchmarks.harness.workload import RequestRecord, prompts, run_level


async def sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[dict]:
    """The JSON events of an OpenAI SSE stream, up to ``[DONE]``."""
    async for raw in response.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return
        yield json.loads(payload)


async def stream_turn(session: aiohttp.ClientSession, url: str, body: dict, record: TurnRecord,
                      origin: float) -> None:
    """Stream one chat turn (``body``) and fill in ``record``: when it was sent (seconds after
    ``origin``), TTFT, end to end, the engine replica that answered (``x-glm-serve-replica``),
    the usage's prompt, cached and completion tokens, the answer's text, or the error."""
    start = time.perf_counter()
    record.sent_s = start - origin
    parts: list[str] = []
    try:
        async with session.post(url, json=body) as response:
            record.replica = response.headers.get("x-glm-serve-replica")
            if response.status != 200:
                record.error = f"HTTP {response.status}: {(await response.text())[:200]}"
                return
            async for event in sse_events(response):
                if "error" in event:
                    record.error = f"stream error: {event['error']}"
                    return
                if event.get("choices"):
                    text = event["choices"][0].get("delta", {}).get("content")
                    if text:
                        if not parts:
                            record.ttft_s = time.perf_counter() - start
                        parts.append(text)
                if usage := event.get("usage"):
                    record.prompt_tokens = usage["prompt_tokens"]
                    record.completion_tokens = usage["completion_tokens"]
                    record.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    finally:
        record.e2e_s = time.perf_counter() - start
        record.text = "".join(parts)


async def _one(session: aiohttp.ClientSession, url: str, body: dict) -> RequestRecord:
    start = time.perf_counter()
    ttft = None
    tokens = 0
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                return RequestRecord(0.0, time.perf_counter() - start, 0,
                                     f"HTTP {response.status}: {(await response.text())[:200]}")
            async for event in sse_events(response):
                if "error" in event:
                    return RequestRecord(0.0, time.perf_counter() - start, 0, f"stream error: {event['error']}")
                if ttft is None and event.get("choices") and event["choices"][0].get("delta", {}).get("content"):
                    ttft = time.perf_counter() - start
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return RequestRecord(0.0, time.perf_counter() - start, 0, f"{type(exc).__name__}: {exc}")
    return RequestRecord(ttft or 0.0, time.perf_counter() - start, tokens)


async def run(system: str, base_url: str, model: str, requests: dict[int, int], max_tokens: int,
              seed: int, timeout_s: float = 600,
              server_cpu: Callable[[], dict[str, float]] | None = None) -> list[dict]:
    """Drive ``base_url`` at each concurrency in ``requests``; one summary per level.

    ``server_cpu``: see :func:`benchmarks.harness.workload.run_level`."""
    url = f"{base_url}/v1/chat/completions"
    results = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        def body(messages):
            return {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                    "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}

        print(f"{system}: warm-up", file=sys.stderr)
        await _one(session, url, body([{"role": "user", "content": "Hello"}]))
        for level in sorted(requests):
            bodies = [body(m) for m in prompts(requests[level], seed)]
            results.append(await run_level(system, level, bodies, lambda b: _one(session, url, b), server_cpu))
    return results
