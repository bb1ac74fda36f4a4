"""CPU time of a server's processes, split into the model's and the serving layer's.

Throughput on a shared 2-core machine drifts by more than the gaps being measured
(docs/measurements.md); CPU seconds per output token do not, because they count work,
not time. The model's processes (vLLM's engine core and workers, named ``VLLM::*``)
do the same work in every system; everything else a system runs (HTTP, proxy,
router, Ray's daemons, vLLM's front end, the load generator) is what the serving
layer costs, and on a CPU node it comes straight out of the model's cores.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
ENGINE_PREFIX = "VLLM::"


def _stat(pid: str) -> tuple[str, int, float] | None:
    """(name, session id, CPU seconds) of one process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    # After the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    return name, int(fields[3]), (int(fields[11]) + int(fields[12])) / _TICK


def session_cpu(session: int) -> dict[str, float]:
    """CPU seconds of the live processes in ``session``, summed by process name."""
    usage: dict[str, float] = {}
    for _, name, seconds in _session_stats(session):
        usage[name] = usage.get(name, 0.0) + seconds
    return usage


def session_pids(session: int) -> list[int]:
    """The live processes in ``session`` (a served system started with ``start_new_session``)."""
    return [pid for pid, _, _ in _session_stats(session)]


def _session_stats(session: int) -> list[tuple[int, str, float]]:
    return [(pid, name, seconds) for pid, name, sid, seconds in process_stats() if sid == session]


def process_stats() -> list[tuple[int, str, int, float]]:
    """(pid, name, session id, CPU seconds) of every live process on this machine."""
    stats = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        stat = _stat(pid)
        if stat is not None:
            stats.append((int(pid), *stat))
    return stats


def serving_seconds(usage: dict[str, float]) -> float:
    """The serving layer's share of :func:`session_cpu`: every process but the model's."""
    return sum(seconds for name, seconds in usage.items() if not name.startswith(ENGINE_PREFIX))


def own_cpu_seconds() -> float:
    """CPU seconds of this process, all threads (the load generator, or the raw engine's front end)."""
    times = os.times()
    return times.user + times.system
