"""The composite demo's ``Client`` protocol and ``get_client``."""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum, auto
from typing import Any, Protocol

from glm_client.conversation import Conversation


class Client(Protocol):
    """What the demo's apps call: stream ``(response, history)`` for a conversation."""

    def generate_stream(self, tools: list[dict[str, Any]], history: list[Conversation], **parameters: Any
                        ) -> Iterator[tuple[str | dict[str, Any], list[dict[str, Any]]]]: ...


class ClientType(Enum):
    VLLM = auto()
    """In-process vLLM engine (``target`` is a model path)."""
    SERVE = auto()
    """glm-serve over HTTP (``target`` is the service's base URL)."""


def get_client(target: str, typ: ClientType | str = ClientType.SERVE, **options: Any) -> Client:
    """A client for ``target``: ``ClientType.SERVE`` (a URL) or ``ClientType.VLLM`` (a model path).

    ``options`` go to the client's constructor (``api_key``, ``timeout`` for SERVE;
    vLLM engine arguments for VLLM).
    """
    if isinstance(typ, str):
        try:
            typ = ClientType[typ.upper()]
        except KeyError:
            raise ValueError(f"unknown client type {typ!r}; choose from {[t.name.lower() for t in ClientType]}") from None
    if typ is ClientType.SERVE:
        from glm_client.http_client import ServeClient

        return ServeClient(target, **options)
    from glm_client.vllm_client import VLLMClient  # raises ImportError naming the extra without vLLM

    return VLLMClient(target, **options)
