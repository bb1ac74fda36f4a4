"""The benchmark's turn-taking: which system runs when, and pausing the others."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pydantic
import pytest

from benchmarks.bench import level_plan, main, requests_per_level
from benchmarks.servers import competing_processes, pause, resume


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


def _state(pid: int) -> str:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2]


def _wait_state(pid: int, wanted: str) -> str:
    for _ in range(100):
        if (state := _state(pid)) == wanted:
            return state
        time.sleep(0.02)
    return _state(pid)


def test_pause_stops_every_process_of_the_session_and_resume_continues_them():
    # A shell and its child share the new session, as a server and its engine processes do.
    proc = subprocess.Popen(["sh", "-c", "sleep 30 & wait"], start_new_session=True)
    try:
        # The shell forks its child when the scheduler lets it: on a loaded machine (CI runs
        # this after the e2e suite) that took more than a fixed 0.2 s once.
        deadline = time.monotonic() + 10
        found: list[str] = []
        while not found and time.monotonic() < deadline:
            time.sleep(0.1)
            found = subprocess.run(["pgrep", "-s", str(proc.pid), "sleep"], capture_output=True,
                                   text=True).stdout.split()
        assert found, "the shell did not start its child"
        child = int(found[0])
        pause(proc.pid)
        assert _wait_state(proc.pid, "T") == "T" and _wait_state(child, "T") == "T"
        resume(proc.pid)
        assert _wait_state(proc.pid, "S") == "S" and _wait_state(child, "S") == "S"
    finally:
        proc.kill()
        subprocess.run(["pkill", "-s", str(proc.pid)])
        proc.wait()


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
