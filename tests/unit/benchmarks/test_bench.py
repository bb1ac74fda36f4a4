"""benchmarks/bench.py: which system runs when, the results' records and targets, and the
checks before anything starts."""

from __future__ import annotations

import subprocess
import sys
import time

import pydantic
import pytest

from benchmarks.bench import check_targets, level_plan, main, records, requests_per_level
from benchmarks.harness.servers import competing_processes


def test_every_level_sends_one_wave_and_concurrency_1_enough_for_a_median():
    assert requests_per_level([1, 8, 32, 64], smoke=False) == {1: 8, 8: 8, 32: 32, 64: 64}
    assert requests_per_level([1, 4], smoke=True) == {1: 2, 4: 4}


def test_raw_runs_before_and_after_the_served_systems_at_every_level():
    assert level_plan(["raw", "vllm-server", "glm-serve"]) == ["raw", "vllm-server", "glm-serve", "raw"]
    assert level_plan(["raw"]) == ["raw"]
    assert level_plan(["glm-serve"]) == ["glm-serve"]


def test_rounds_put_raw_between_every_round_and_reverse_the_served_order():
    assert level_plan(["raw", "vllm-server", "glm-serve"], rounds=3) == [
        "raw", "vllm-server", "glm-serve", "raw", "glm-serve", "vllm-server", "raw", "vllm-server", "glm-serve", "raw"]
    assert level_plan(["raw", "glm-serve", "glm-serve:grpc"], rounds=2) == [
        "raw", "glm-serve", "glm-serve:grpc", "raw", "glm-serve:grpc", "glm-serve", "raw"]
    assert level_plan(["glm-serve", "vllm-server"], rounds=2) == ["glm-serve", "vllm-server", "vllm-server", "glm-serve"]


def _run(system: str, c: int, tok_s: float, ttft: float, itl: float | None = 30.0) -> dict:
    return {"system": system, "concurrency": c, "requests": 4, "errors": 0, "output_tokens": 512,
            "wall_s": 20.0, "throughput_tok_s": tok_s, "ttft_p50_ms": ttft, "itl_p50_ms": itl,
            "cpu_by_process": {"raylet": 0.01}}


def test_targets_are_judged_on_the_round_ratios():
    runs = {("raw", 1): [_run("raw", 1, 30.0, 50.0), _run("raw", 1, 30.0, 50.0)],
            ("glm-serve", 1): [_run("glm-serve", 1, 29.0, 70.0)],
            ("raw", 32): [_run("raw", 32, 600.0, 90.0, 40.0), _run("raw", 32, 600.0, 90.0, 40.0)],
            ("glm-serve", 32): [_run("glm-serve", 32, 500.0, 99.0, 48.0)]}
    results = records(["raw", "glm-serve"], [1, 32], runs)
    glm_1 = next(r for r in results if r["system"] == "glm-serve" and r["concurrency"] == 1)
    assert glm_1["throughput_vs_raw"] == round(29 / 30, 3) and glm_1["ttft_p50_delta_ms"] == 20.0
    targets = {name: ok for name, ok, _ in check_targets(results)}
    assert targets["TTFT p50 at c=1 <= raw + 25 ms"] is True
    assert targets["throughput at c=32 >= 0.90x raw"] is False


def test_a_compared_config_is_checked_before_anything_starts(tmp_path, capsys):
    bad = tmp_path / "variant.yaml"
    bad.write_text("applications:\n  - args:\n      model: {model: m, stream_intervall: 2}\n")
    with pytest.raises(pydantic.ValidationError, match="stream_intervall"):
        main(["--compare", f"typo={bad}", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["--compare", f"x={tmp_path / 'missing.yaml'}", "--out", str(tmp_path)])
    assert "no such file" in capsys.readouterr().err
    for spec in ("=config/serve-cpu.yaml", "a/b=config/serve-cpu.yaml", "x=y=config/serve-cpu.yaml"):
        with pytest.raises(SystemExit):
            main(["--compare", spec, "--out", str(tmp_path)])
    assert not (tmp_path / "results.json").exists()


def _named_process(name: str) -> subprocess.Popen:
    """A sleeping process whose name (/proc/PID/comm) is ``name``, as Ray's daemons name theirs."""
    code = (f"import ctypes, sys, time; ctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0); "
            "print(flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()  # renamed
    return proc


def test_a_running_ray_cluster_stops_the_benchmark_before_it_starts_anything(tmp_path, capsys):
    raylet = _named_process("raylet")
    try:
        assert f"{raylet.pid} raylet" in competing_processes()
        started = time.monotonic()
        assert main(["--out", str(tmp_path)]) == 2
        assert time.monotonic() - started < 5
        assert "already running" in capsys.readouterr().err
        assert not (tmp_path / "results.json").exists()
    finally:
        raylet.kill()
        raylet.wait()
    assert f"{raylet.pid} raylet" not in competing_processes()
