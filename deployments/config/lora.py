"""``model.lora``: LoRA adapters served on the base model (docs/lora.md)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from deployments.config.base import StrictModel

ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""What an adapter's name may be: it is a folder name under ``adapters_dir`` and a metrics label."""

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ranks vLLM allows for ``max_lora_rank``."""


class LoraConfig(StrictModel):
    """LoRA adapters served on the base model: a request picks one with ``model: <adapter name>``
    (docs/lora.md)."""

    adapters: dict[str, str] = Field(
        default_factory=dict,
        description="Adapters by name: the path of each PEFT adapter folder (adapter_config.json and its weights). "
                    "Paths are read on the engine and router nodes: local on each, or a shared mount.",
    )
    adapters_dir: str | None = Field(
        default=None,
        description="A folder whose subfolders are PEFT adapters, each named by its folder. Looked up on each "
                    "request, so an adapter copied in is served without a restart; a name in `adapters` wins.",
    )
    max_loras: int = Field(default=1, ge=1, le=256,
                           description="Most distinct adapters in one engine step's batch (vLLM's max_loras).")
    max_cpu_loras: int | None = Field(
        default=None, ge=1,
        description="Adapters an engine replica keeps loaded (least recently used out); at least max_loras. "
                    "None: max_loras.",
    )
    max_lora_rank: int = Field(
        default=16,
        description="Highest adapter rank the engine accepts (one of 1, 8, 16, 32, 64, 128, 256, 320, 512). An "
                    "adapter of a higher rank is refused with 400; a higher setting costs memory per slot.",
    )

    @field_validator("max_lora_rank")
    @classmethod
    def _allowed_rank(cls, value: int) -> int:
        if value not in LORA_RANKS:
            raise ValueError(f"must be one of {', '.join(map(str, LORA_RANKS))}")
        return value

    @field_validator("adapters")
    @classmethod
    def _adapter_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not ADAPTER_NAME.fullmatch(name):
                raise ValueError(f"adapter name {name!r}: letters, digits, '.', '_' and '-', at most 128, "
                                 "starting with a letter or digit")
        return value

    @model_validator(mode="after")
    def _cpu_slots_hold_the_batch(self) -> LoraConfig:
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(f"max_cpu_loras ({self.max_cpu_loras}) must be at least max_loras ({self.max_loras})")
        return self

    @property
    def slots(self) -> int:
        """Adapters one engine replica keeps loaded."""
        return self.max_cpu_loras or self.max_loras

    def engine_args(self) -> dict[str, Any]:
        """vLLM's LoRA engine arguments."""
        return {"enable_lora": True, "max_loras": self.max_loras, "max_cpu_loras": self.slots,
                "max_lora_rank": self.max_lora_rank}
