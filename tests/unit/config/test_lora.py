"""LoRA's config (deployments/config/lora.py) and where the model's config checks it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deployments.config import LoraConfig, ModelConfig


def test_lora_config_names_its_errors():
    with pytest.raises(ValidationError, match="max_lora_rank"):
        LoraConfig(max_lora_rank=12)
    with pytest.raises(ValidationError, match="max_cpu_loras"):
        LoraConfig(max_loras=4, max_cpu_loras=2)
    with pytest.raises(ValidationError, match="adapter name"):
        LoraConfig(adapters={"../x": "/p"})
    with pytest.raises(ValidationError, match="base model's own name"):
        ModelConfig(model="/m/base", lora={"adapters": {"base": "/p"}})
    with pytest.raises(ValidationError, match="use model.lora"):
        ModelConfig(model="/m/base", engine_kwargs={"enable_lora": True})
    args = ModelConfig(model="/m/base", lora={"max_loras": 2, "max_cpu_loras": 4}).engine_args()
    assert (args["enable_lora"], args["max_loras"], args["max_cpu_loras"], args["max_lora_rank"]) == (True, 2, 4, 16)
