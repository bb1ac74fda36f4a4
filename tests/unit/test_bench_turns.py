"""The benchmark's turn-taking: which system runs when, and pausing the others."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from benchmarks.bench import level_plan, main
from benchmarks.servers import competing_processes, pause, resume


def test_raw_runs_before_and_after_the_served_systems_at_every_level():
    assert level_plan(["raw", "vllm-server", "glm-serve"]) == ["raw", "vllm-server", "glm-serve", "raw"]
    assert level_plan(["raw"]) == ["raw"]
    assert level_plan(["glm-serve"]) == ["glm-serve"]


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
        time.sleep(0.2)
        child = int(subprocess.run(["pgrep", "-s", str(proc.pid), "sleep"], capture_output=True,
                                   text=True).stdout.split()[0])
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
        assert f"{raylet.pid} raylet" in capsys.readouterr().err
        assert not (tmp_path / "results.json").exists()
    finally:
        raylet.kill()
        raylet.wait()
    assert f"{raylet.pid} raylet" not in competing_processes()
