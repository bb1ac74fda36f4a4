"""The benchmark workload and its statistics: the same seeded prompts for every system.

Every system gets the same chat prompts, the same fixed output length
(``ignore_eos`` with ``max_tokens``) and the same concurrency, and every request is
reduced to one :class:`RequestRecord`, so the numbers compare like with like.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tqdm import tqdm

from benchmarks.harness.cpu_usage import own_cpu_seconds, serving_seconds
from benchmarks.harness.stats import percentile

Item = TypeVar("Item")

_TOPICS = ["a lighthouse keeper", "a lost robot", "the last bakery in town", "a river that flows uphill",
           "a chess match", "a winter market", "a broken violin", "two rival gardeners", "a night train",
           "a map with no names", "a clockmaker's apprentice", "the first snow on Mars"]
_ASKS = ["Write a short story about {}.", "Describe {} in vivid detail.", "Explain why {} matters to people.",
         "Write a poem about {}.", "Tell me a legend about {}."]


def prompts(count: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """``count`` chat conversations, identical for a given seed."""
    rng = random.Random(seed)
    return [[{"role": "user", "content": rng.choice(_ASKS).format(rng.choice(_TOPICS))}] for _ in range(count)]


@dataclass
class RequestRecord:
    """One finished (or failed) request, measured from the client's side."""

    ttft_s: float
    e2e_s: float
    output_tokens: int
    error: str | None = None

    @property
    def itl_s(self) -> float | None:
        """Mean time per output token after the first (the same definition for every system)."""
        if self.error or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


def summarize(system: str, concurrency: int, records: list[RequestRecord], wall_s: float) -> dict:
    """One results.json record: throughput and latency percentiles (milliseconds,
    :func:`benchmarks.harness.stats.percentile`)."""
    ok = [r for r in records if r.error is None]
    tokens = sum(r.output_tokens for r in ok)
    out: dict = {
        "system": system,
        "concurrency": concurrency,
        "requests": len(records),
        "errors": len(records) - len(ok),
        "output_tokens": tokens,
        "wall_s": round(wall_s, 3),
        "throughput_tok_s": round(tokens / wall_s, 1) if wall_s > 0 else 0.0,
    }
    series = {"ttft": [r.ttft_s for r in ok], "itl": [r.itl_s for r in ok if r.itl_s is not None],
              "e2e": [r.e2e_s for r in ok]}
    for name, values in series.items():
        for q in (50, 90, 99):
            value = percentile(values, q)
            out[f"{name}_p{q}_ms"] = None if value is None else round(value * 1000, 2)
    first_errors = sorted({r.error for r in records if r.error})[:3]
    if first_errors:
        out["error_samples"] = first_errors
    return out


_COMBINED = ("throughput_tok_s", "serving_cpu_ms_per_token") + tuple(
    f"{m}_p{q}_ms" for m in ("ttft", "itl", "e2e") for q in (50, 90, 99))


def combine(runs: list[dict]) -> dict:
    """One record from several runs of one system at one level: the median of each metric
    (the mean of two), counts summed, and each run's tok/s in ``runs_tok_s``; ``drift`` is
    last / first - 1 (throughput), how far the machine moved while the level ran; each
    run's ``cpu_by_process`` moves to ``cpu_by_process_runs``. A single run is returned as
    it is."""
    if len(runs) == 1:
        return runs[0]
    record = dict(runs[0])
    for key in ("requests", "errors", "output_tokens", "wall_s"):
        record[key] = round(sum(r[key] for r in runs), 3)
    for key in _COMBINED:
        values = [r[key] for r in runs if r.get(key) is not None]
        record[key] = round(statistics.median(values), 2) if values else None
    record["runs_tok_s"] = [r["throughput_tok_s"] for r in runs]
    first, last = runs[0]["throughput_tok_s"], runs[-1]["throughput_tok_s"]
    record["drift"] = round(last / first - 1, 3) if first else None
    samples = sorted({e for r in runs for e in r.get("error_samples", [])})[:3]
    if samples:
        record["error_samples"] = samples
    record.pop("cpu_by_process", None)
    record["cpu_by_process_runs"] = [r.get("cpu_by_process", {}) for r in runs]
    return record


def compare_rounds(raw_runs: list[dict], runs: list[dict]) -> dict:
    """A served system's runs at one level against raw's: run ``r`` is compared with the
    mean of the raw runs just before and just after it (``raw_runs[r]``, ``raw_runs[r + 1]``;
    only the one before if there is no run after). Returns the median ratio of each round
    (what the targets are judged on) and the rounds' ratios themselves."""
    def reference(r: int, key: str) -> float | None:
        values = [raw[key] for raw in raw_runs[r:r + 2] if raw.get(key) is not None]
        return sum(values) / len(values) if values else None

    by_round: dict[str, list[float]] = {"throughput_vs_raw": [], "itl_p50_vs_raw": [], "ttft_p50_delta_ms": [],
                                        "itl_p50_delta_ms": []}
    for r, run in enumerate(runs):
        tok_s, itl, ttft = (reference(r, k) for k in ("throughput_tok_s", "itl_p50_ms", "ttft_p50_ms"))
        if tok_s:
            by_round["throughput_vs_raw"].append(run["throughput_tok_s"] / tok_s)
        if itl and run.get("itl_p50_ms") is not None:
            by_round["itl_p50_vs_raw"].append(run["itl_p50_ms"] / itl)
            by_round["itl_p50_delta_ms"].append(run["itl_p50_ms"] - itl)
        if ttft is not None and run.get("ttft_p50_ms") is not None:
            by_round["ttft_p50_delta_ms"].append(run["ttft_p50_ms"] - ttft)
    out: dict = {}
    for key, values in by_round.items():
        if values:
            digits = 2 if key.endswith("_ms") else 3
            out[key] = round(statistics.median(values), digits)
            if len(values) > 1:
                out[f"rounds_{key}"] = [round(v, digits) for v in values]
    return out


async def run_level(system: str, concurrency: int, items: list[Item],
                    one: Callable[[Item], Awaitable[RequestRecord]],
                    server_cpu: Callable[[], dict[str, float]] | None = None) -> dict:
    """Send ``items`` through ``one`` with at most ``concurrency`` in flight; a progress
    bar on stderr; the level's summary.

    ``server_cpu`` returns the CPU seconds used so far by the server's processes, by
    process name (:func:`benchmarks.harness.cpu_usage.session_cpu`). The summary's
    ``serving_cpu_ms_per_token`` is what this process (the load generator; for the raw
    engine also its front end) and the server's processes other than the model's spent
    per output token; ``cpu_by_process`` is each process name's share of one core.
    """
    gate = asyncio.Semaphore(concurrency)
    own_start, server_start = own_cpu_seconds(), server_cpu() if server_cpu else {}
    with tqdm(total=len(items), desc=f"{system} c={concurrency}", file=sys.stderr) as bar:
        async def gated(item: Item) -> RequestRecord:
            async with gate:
                try:
                    return await one(item)
                finally:
                    bar.update()

        start = time.perf_counter()
        records = await asyncio.gather(*(gated(item) for item in items))
    wall_s = time.perf_counter() - start
    server_end = server_cpu() if server_cpu else {}
    used = {name: seconds - server_start.get(name, 0.0) for name, seconds in server_end.items()}
    used["load generator" if server_cpu else "raw engine front end + load generator"] = own_cpu_seconds() - own_start
    summary = summarize(system, concurrency, list(records), wall_s)
    if summary["output_tokens"]:
        summary["serving_cpu_ms_per_token"] = round(serving_seconds(used) / summary["output_tokens"] * 1000, 3)
    summary["cpu_by_process"] = {name: round(seconds / wall_s, 3)
                                 for name, seconds in sorted(used.items(), key=lambda kv: -kv[1])
                                 if seconds / wall_s >= 0.005}
    return summary
