"""The in-process VLLMClient (glm_client/src/glm_client/vllm_client.py): loaded on first use, and
without vLLM an error that names the extra to install."""

from __future__ import annotations

import importlib.util

import pytest

import glm_client
from glm_client import get_client


def test_vllm_client_is_loaded_on_first_use_and_names_the_extra_without_vllm(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "vllm" else real_find_spec(name, *args))
    monkeypatch.delitem(vars(glm_client), "VLLMClient", raising=False)
    with pytest.raises(ImportError, match=r"VLLMClient needs vllm.*pip install 'glm-serve-client\[vllm\]'"):
        glm_client.VLLMClient  # noqa: B018
    with pytest.raises(ImportError, match=r"pip install 'glm-serve-client\[vllm\]'"):
        get_client("/models/glm-4-9b-chat-hf", "vllm")
    assert "VLLMClient" in dir(glm_client) and "VLLMClient" not in glm_client.__all__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        glm_client.nope  # noqa: B018
