"""The contract between the router and the engine deployment.

The router sends one :class:`GenerationRequest`. The engine answers with either

* ``EngineDeployment.generate(request, reply_to)``: :class:`GenerationChunk` items
  (text deltas; the last has a ``finish_reason``) written to the router's stream
  channel at ``reply_to`` (:mod:`deployments.stream_channel`), and as the call's
  result the number of chunks sent, or a single :class:`EngineError`, with nothing
  sent, when the request is refused before generation starts; or
* ``EngineDeployment.complete``: one :class:`GenerationResult` or one :class:`EngineError`.

Refusals are values, not exceptions, so they cross the Ray hop with their HTTP
status intact. An exception out of the engine means the engine failed; the router
maps it to 500 (or 503 when the engine is dead) before streaming, or to an SSE error
event after. These are plain slotted dataclasses, not pydantic models: one is
encoded per streamed chunk, so they must cost next to nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class GenerationRequest:
    """One generation. Exactly one of ``messages`` and ``prompt`` is set; message content
    is a string (the router flattens OpenAI's text parts)."""

    request_id: str
    messages: list[dict[str, Any]] | None = None
    prompt: str | list[int] | None = None
    tools: list[dict[str, Any]] | None = None
    """OpenAI tools to render into the prompt (GLM-4 format only)."""
    sampling: dict[str, Any] = field(default_factory=dict)
    """SamplingParams keyword arguments already range-checked by the router."""
    max_tokens: int | None = None
    """None: the configured default, else what is left of the context."""


@dataclass(slots=True)
class GenerationChunk:
    """Text the engine produced since the previous chunk (possibly several tokens)."""

    text: str
    num_tokens: int
    finish_reason: str | None = None
    prompt_tokens: int = 0
    """Set on the first chunk only."""
    replica_id: str = ""
    """Set on the first chunk only: the engine replica serving the request."""


@dataclass(slots=True)
class GenerationResult:
    """A whole completion (non-streaming path)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    replica_id: str


@dataclass(slots=True)
class EngineError:
    """A request the engine refused, in OpenAI's error vocabulary."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
