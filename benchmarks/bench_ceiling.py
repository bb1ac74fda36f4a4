"""``make bench-ceiling``: the serving layer's own limits, with engines that cost nothing.

Simulated engines on the GPU profile at full speed (no time scaling), so whatever limits
is glm-serve and Serve, not a model:

* **proxy and routers, by chunk size**: 4 simulated engines, 2 router replicas, 96 streams
  of 512 tokens with no think time, ``model.streaming`` fixed at 1, 4 and 16 tokens a chunk.
  Reported: tokens/s delivered, and the CPU (cores) of Serve's proxy, the router replicas,
  the engine replicas and the load generator. Tokens per proxy core-second is what one
  proxy process (one core at most) carries;
* **the placement table**: the real :class:`~deployments.routing.placement_service.
  PlacementTableActor` called by 32 router-like actors, each with 4 lookups in flight, on a
  table of 64 replicas; calls/s, latency, and the actor's CPU;
* **Serve's controller at 64 engine replicas**: its control-loop duration
  (``get_health_metrics``, what ``serve_controller_control_loop_duration_s`` exports) and its
  CPU, idle and under 64 streams.

Everything shares this machine's 2 cores, load generator included: a limit found here is a
lower bound for a node whose proxy has a core of its own. Writes
``benchmarks/results/ceiling.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yaml

from benchmarks.harness import http_load, servers
from benchmarks.harness.cpu_usage import own_cpu_seconds
from benchmarks.harness.reporting import write_results
from benchmarks.harness.stats import percentile

ROOT = servers.ROOT
MODEL = "smollm2-135m-instruct"
ROLES = {"proxy": "ray::ProxyActor", "routers": "ray::ServeReplica:glm:GLMRouter",
         "engines": "ray::ServeReplica:glm:GLMEngine", "controller": "ray::ServeController"}


def _role_cpu() -> dict[str, float]:
    """CPU seconds so far of the app's processes, by role (their command lines)."""
    totals = dict.fromkeys(ROLES, 0.0)
    for proc in psutil.process_iter(["cmdline", "cpu_times"]):
        line = " ".join(proc.info["cmdline"] or [])
        for role, prefix in ROLES.items():
            if line.startswith(prefix) and proc.info["cpu_times"] is not None:
                totals[role] += proc.info["cpu_times"].user + proc.info["cpu_times"].system
    totals["load generator"] = own_cpu_seconds()
    return totals


def app_config(base: dict, engines: int, routers: int, chunk: int | None) -> dict:
    config = yaml.safe_load(yaml.safe_dump(base))
    args = config["applications"][0]["args"]
    args["model"]["simulated"] = {"profile": "gpu-h100-glm4-9b", "time_scale": 1.0}
    args["model"]["max_model_len"] = 4096
    if chunk is not None:
        args["model"]["streaming"] = {"min_chunk_tokens": chunk, "max_chunk_tokens": chunk}
    args["engine"]["num_replicas"] = engines
    args["router"]["deployment"]["num_replicas"] = routers
    return config


async def _streams(base_url: str, streams: int, seconds: float, max_tokens: int) -> dict[str, Any]:
    """``streams`` closed-loop clients with no think time for ``seconds``; tokens/s."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "count"}], "max_tokens": max_tokens,
            "ignore_eos": True, "stream": True}
    tokens = chunks = failed = 0
    stop = time.monotonic() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal tokens, chunks, failed
        while time.monotonic() < stop:
            try:
                async with session.post(f"{base_url}/v1/chat/completions", json=body) as response:
                    if response.status != 200:
                        failed += 1
                        await asyncio.sleep(0.5)
                        continue
                    async for event in http_load.sse_events(response):
                        for choice in event.get("choices", ()):
                            text = choice.get("delta", {}).get("content") or ""
                            tokens += text.count(" the")
                            chunks += 1
            except (aiohttp.ClientError, asyncio.TimeoutError):
                failed += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.monotonic()
        await asyncio.gather(*(client(session) for _ in range(streams)))
        wall = time.monotonic() - started
    return {"tokens_per_s": tokens / wall, "chunks_per_s": chunks / wall, "failed": failed, "wall_s": wall}


def proxy_ceiling(base: dict, chunks: list[int], streams: int, seconds: float, log_dir: Path) -> list[dict]:
    rows = []
    for chunk in chunks:
        path = log_dir / f"ceiling-chunk{chunk}.yaml"
        path.write_text(yaml.safe_dump(app_config(base, 4, 2, chunk)))
        with servers.glm_serve(path, log_dir) as (base_url, _, _):
            asyncio.run(_streams(base_url, streams, min(10.0, seconds), 512))  # warm-up
            before = _role_cpu()
            result = asyncio.run(_streams(base_url, streams, seconds, 512))
            after = _role_cpu()
        cores = {role: (after[role] - before[role]) / result["wall_s"] for role in after}
        row = {"chunk_tokens": chunk, **result, "cores": cores,
               "tokens_per_proxy_core_s": result["tokens_per_s"] / max(cores["proxy"], 1e-9),
               "tokens_per_router_core_s": result["tokens_per_s"] / max(cores["routers"], 1e-9)}
        rows.append(row)
        print(f"chunk {chunk:2d}: {result['tokens_per_s']:7.0f} tok/s ({result['chunks_per_s']:.0f} chunks/s, "
              f"{result['failed']} failed); cores: " + ", ".join(f"{k} {v:.2f}" for k, v in cores.items())
              + f"; {row['tokens_per_proxy_core_s']:.0f} tokens per proxy core-second", flush=True)
    return rows


def placement_table_rate(routers: int, replicas: int, in_flight: int, seconds: float) -> dict[str, Any]:
    import ray

    from deployments.routing.placement_service import PlacementTableActor

    class MeasuredTable(PlacementTableActor):
        async def pid(self) -> int:
            return os.getpid()

    @ray.remote(num_cpus=0)
    class Router:
        async def hammer(self, table: Any, names: list[str], seconds: float, in_flight: int, seed: int) -> list[float]:
            rng = random.Random(seed)
            latencies: list[float] = []
            stop = time.monotonic() + seconds

            async def one_at_a_time() -> None:
                while time.monotonic() < stop:
                    loads = {name: rng.randrange(0, 64) for name in names}
                    # half new conversations, half turns of known ones
                    key = rng.getrandbits(63) if rng.random() < 0.5 else rng.randrange(10_000)
                    start = time.perf_counter()
                    await table.resolve.remote(key, loads, None)
                    latencies.append(time.perf_counter() - start)

            await asyncio.gather(*(one_at_a_time() for _ in range(in_flight)))
            return latencies

    # a cluster of its own, even where another runs on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        table = ray.remote(MeasuredTable).options(num_cpus=0, max_concurrency=1000).remote(100_000, 60.0)
        table_proc = psutil.Process(ray.get(table.pid.remote()))
        callers = [Router.remote() for _ in range(routers)]
        names = [f"replica-{i}" for i in range(replicas)]
        ray.get([c.hammer.remote(table, names, 2.0, 1, i) for i, c in enumerate(callers)])  # warm-up
        before = sum(table_proc.cpu_times()[:2])
        started = time.monotonic()
        results = ray.get([c.hammer.remote(table, names, seconds, in_flight, i) for i, c in enumerate(callers)])
        wall = time.monotonic() - started
        table_cores = (sum(table_proc.cpu_times()[:2]) - before) / wall
    finally:
        ray.shutdown()
    latencies = [x for r in results for x in r]
    p50, p99 = (percentile(latencies, q) or 0.0 for q in (50, 99))
    row = {"routers": routers, "replicas": replicas, "in_flight_per_router": in_flight,
           "calls_per_s": len(latencies) / seconds, "p50_ms": p50 * 1000, "p99_ms": p99 * 1000,
           "table_cores": table_cores}
    print(f"placement table: {row['calls_per_s']:.0f} calls/s from {routers} callers x {in_flight} in flight, "
          f"{replicas} replicas; p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms; "
          f"the table's actor used {table_cores:.2f} cores", flush=True)
    return row


def controller_at(base: dict, replicas: int, seconds: float, log_dir: Path) -> dict[str, Any]:
    import ray

    path = log_dir / f"controller-{replicas}.yaml"
    path.write_text(yaml.safe_dump(app_config(base, replicas, 2, None)))
    out: dict[str, Any] = {"replicas": replicas}
    with servers.glm_serve(path, log_dir, timeout_s=900) as (base_url, started_s, _):
        out["start_s"] = started_s
        ray.init(address="auto", log_to_driver=False)
        try:
            controller = ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
            for phase in ("idle", "64 streams"):
                before = _role_cpu()["controller"]
                started = time.monotonic()
                if phase == "idle":
                    time.sleep(seconds)
                else:
                    asyncio.run(_streams(base_url, 64, seconds, 256))
                wall = time.monotonic() - started
                health = ray.get(controller.get_health_metrics.remote())
                loop = health.get("loop_duration_s") or {}
                out[phase] = {"controller_cores": (_role_cpu()["controller"] - before) / wall,
                              "loop_duration_s": loop, "loops_per_s": health.get("loops_per_second")}
                print(f"controller at {replicas} replicas, {phase}: {out[phase]['controller_cores']:.2f} cores, "
                      f"control loop {loop}", flush=True)
        finally:
            ray.shutdown()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "serve-sim.yaml")
    parser.add_argument("--chunks", type=int, nargs="*", default=[1, 4, 16])
    parser.add_argument("--streams", type=int, default=96)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--table-routers", type=int, default=32)
    parser.add_argument("--table-replicas", type=int, default=64)
    parser.add_argument("--controller-replicas", type=int, default=64, help="0: skip")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ceiling.json")
    args = parser.parse_args(argv)
    base = yaml.safe_load(args.config.read_text())
    results: dict[str, Any] = {}
    results["placement_table"] = placement_table_rate(args.table_routers, args.table_replicas, 4, args.seconds)
    with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as tmp:
        results["proxy"] = proxy_ceiling(base, args.chunks, args.streams, args.seconds, Path(tmp))
        if args.controller_replicas:
            results["controller"] = controller_at(base, args.controller_replicas, args.seconds, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "cores": os.cpu_count(), "streams": args.streams,
            "seconds": args.seconds, "versions": servers.versions("ray")}
    write_results(args.out, meta, results, [])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
