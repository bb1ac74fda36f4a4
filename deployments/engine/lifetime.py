"""Tie each vLLM engine-core process to the engine replica that started it.

vLLM runs its engine core in a child process. When Ray kills an engine replica (a
crash, a failed health check, `ray.kill`, a node drain), that child outlives it: an
orphaned ``VLLM::EngineCore`` keeps its worker, its memory and a share of the CPU for
as long as the machine runs, and on a GPU the GPU memory the replacement replica needs.

vLLM loads every ``vllm.general_plugins`` entry point in each of its processes. Ours
(:func:`vllm_plugin`, registered in pyproject.toml) asks Linux to SIGKILL the engine
core when its parent dies, but only in a process whose parent is a glm-serve engine
replica that announced itself with :func:`mark_engine_owner`, so vLLM used any other
way (its own server, the benchmark's raw engine) is left alone. vLLM's own death pipe
then takes the engine core's workers down with it.
"""

from __future__ import annotations

import ctypes
import os
import signal

OWNER_ENV = "GLM_SERVE_ENGINE_OWNER_PID"
_PR_SET_PDEATHSIG = 1


def mark_engine_owner() -> None:
    """Called by an engine replica before it starts vLLM: 'my children are engine cores'."""
    os.environ[OWNER_ENV] = str(os.getpid())


def vllm_plugin() -> None:
    """vLLM general plugin: runs at start-up in every vLLM process."""
    owner = os.environ.get(OWNER_ENV)
    if not owner or os.getppid() != int(owner) or not hasattr(os, "fork"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return  # not Linux: nothing to tie with; the process is still usable
    if os.getppid() != int(owner):
        os._exit(1)  # the replica died before the tie was made
