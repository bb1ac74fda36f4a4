"""PEFT LoRA adapters made on the spot, for the tests and ``make bench-lora``.

An adapter made by ``peft`` starts as a no-op (its B matrices are zero); here B gets
seeded random values, so each adapter changes the model's output and two seeds give two
different adapters. The files are exactly what a fine-tuning run saves
(``save_pretrained``: adapter_config.json and adapter_model.safetensors).
"""

from __future__ import annotations

from pathlib import Path

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""SmolLM2 (Llama): the attention and MLP projections."""
GLM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")
"""GLM-4's -hf checkpoints (GlmForCausalLM): the attention and the fused MLP projections."""


def make_adapter(base_model: str | Path, out: str | Path, rank: int, seed: int, targets: tuple[str, ...],
                 scale: float = 0.15, base: object | None = None) -> Path:
    """Write a LoRA adapter of ``rank`` for ``base_model`` to ``out`` (kept when already
    there) and return its folder. ``base``: the model already loaded (it is modified and
    unloaded again), to make several adapters from one load."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = Path(out)
    if (out / "adapter_model.safetensors").is_file():
        return out
    model = base if base is not None else AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets),
                                                  lora_dropout=0.0))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    peft_model.save_pretrained(out)
    peft_model.unload()  # the base model again, for the next adapter
    if hasattr(model, "peft_config"):
        del model.peft_config  # or the next get_peft_model adds a second adapter beside this one
    return out
