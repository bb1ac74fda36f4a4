"""benchmarks/harness/servers.py: pausing a system's session and resuming it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from benchmarks.harness.servers import pause, resume


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
