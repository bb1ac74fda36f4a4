"""The contract between the router and the engine deployment.

The router sends one :class:`GenerationRequest`. The engine answers with either

* ``EngineDeployment.generate(request, reply_to)``: :class:`GenerationChunk` items
  (text deltas of one choice; the last of each choice has a ``finish_reason``) written
  to the router's stream channel at ``reply_to`` (:mod:`deployments.stream_channel`),
  and as the call's result the number of chunks sent; or
* ``EngineDeployment.complete``: one :class:`GenerationResult`.

A request the engine refuses (too long, bad sampling values, a schema it cannot
compile) raises :class:`~deployments.core.errors.APIError` before anything is sent;
:class:`~deployments.core.errors.EngineUnavailable` means the engine itself failed (its
vLLM core died); any other exception is a bug (500). These
are plain slotted dataclasses, not pydantic models: one is encoded per streamed
chunk, so they must cost next to nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(slots=True)
class GenerationRequest:
    """One generation. Exactly one of ``messages`` and ``prompt`` is set; message content
    is a string (the router flattens OpenAI's text parts)."""

    request_id: str
    messages: list[dict[str, Any]] | None = None
    prompt: str | list[int] | None = None
    tools: list[dict[str, Any]] | None = None
    """OpenAI tools to render into the prompt (chat formats with tool calls only)."""
    force_tool_call: bool = False
    """The reply must be a call of one of ``tools`` (``tool_choice`` required or named)."""
    structured: dict[str, Any] | None = None
    """vLLM ``StructuredOutputsParams`` fields (``json`` or ``json_object``) from ``response_format``."""
    sampling: dict[str, Any] = field(default_factory=dict)
    """SamplingParams keyword arguments already range-checked by the router (``n`` included)."""
    logprobs: int | None = None
    """Top logprobs per token to return (0: only the chosen token's); None: no logprobs."""
    max_tokens: int | None = None
    """None: the configured default, else what is left of the context."""
    session_id: str | None = None
    """An affinity hint for the engine deployment's request router (``x-session-id`` or ``user``)."""
    placement: tuple[str, bool] | None = None
    """Where the shared placement table keeps this request's conversation (engine replica id,
    and whether it was placed just now), asked by the router deployment before the handle
    call; read by the prefix request router. None: not asked, or no answer in time."""
    adapter: str | None = None
    """The LoRA adapter to generate with (a name of ``model.lora``); None: the base model."""
    priority: int = 0
    """vLLM's request priority (lower runs first): 0 interactive, 1 batch tenants."""
    tenant: str | None = None
    """The caller's tenant, where the engine enforces a limit of the tenant's own."""
    adapter_loads_per_minute: int | None = None
    """The tenant's budget of adapter loads on one engine replica (None: no limit)."""
    cache_salt: str | None = None
    """Partitions vLLM's prefix cache: only requests with the same salt share cached blocks
    (one per tenant or cache group). None: the shared, unsalted cache."""
    first_token_deadline: float | None = None
    """Wall-clock time (``time.time()``) by which the first output must exist, queues included."""
    deadline: float | None = None
    """Wall-clock time by which the whole request must be done."""


@dataclass(slots=True)
class TokenLogprob:
    """One generated token's log probability, with the most likely alternatives."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass(slots=True)
class GenerationChunk:
    """Text one choice produced since its previous chunk (possibly several tokens)."""

    text: str
    num_tokens: int
    finish_reason: str | None = None
    prompt_tokens: int = 0
    """Set on the request's first chunk only."""
    replica_id: str = ""
    """Set on the request's first chunk only: the engine replica serving the request."""
    index: int = 0
    """Which choice (0..n-1) this text belongs to."""
    logprobs: list[TokenLogprob] | None = None
    """Per token of ``text``, when the request asked for logprobs."""
    cached_tokens: int = 0
    """Set on the request's first chunk only: prompt tokens vLLM's prefix cache supplied."""


CHUNK_FIELDS = tuple(f.name for f in fields(GenerationChunk))
"""The order of a chunk's values on the stream channel's wire: the dataclass's own."""
_LOGPROBS_AT = CHUNK_FIELDS.index("logprobs")
_TYPES = {"text": str, "num_tokens": int, "prompt_tokens": int, "replica_id": str, "index": int, "cached_tokens": int}
_TYPED = tuple((CHUNK_FIELDS.index(name), kind) for name, kind in _TYPES.items())


def chunk_to_wire(chunk: GenerationChunk) -> list[Any]:
    """``chunk``'s values in :data:`CHUNK_FIELDS` order, logprobs as nested lists (JSON-ready)."""
    values = [getattr(chunk, name) for name in CHUNK_FIELDS]
    if chunk.logprobs is not None:
        values[_LOGPROBS_AT] = [[t.token, t.logprob, t.top] for t in chunk.logprobs]
    return values


def chunk_from_wire(values: Sequence[Any]) -> GenerationChunk:
    """The chunk :func:`chunk_to_wire` wrote; ValueError when ``values`` is not one."""
    if len(values) != len(CHUNK_FIELDS):
        raise ValueError(f"a chunk has {len(CHUNK_FIELDS)} values, not {len(values)}")
    for at, kind in _TYPED:
        if not isinstance(values[at], kind):
            raise ValueError(f"chunk field {CHUNK_FIELDS[at]} is not {kind.__name__}")
    chunk = GenerationChunk(*values)
    raw = chunk.logprobs
    if raw is not None:
        try:
            chunk.logprobs = [TokenLogprob(token, logprob, [(t, lp) for t, lp in top]) for token, logprob, top in raw]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"chunk logprobs are malformed: {exc}") from None
    return chunk


@dataclass(slots=True)
class Choice:
    """One whole choice of a completion."""

    text: str
    completion_tokens: int
    finish_reason: str | None
    logprobs: list[TokenLogprob] | None = None


@dataclass(slots=True)
class GenerationResult:
    """A whole completion (non-streaming path)."""

    choices: list[Choice]
    prompt_tokens: int
    replica_id: str
    cached_tokens: int = 0
    """Prompt tokens vLLM's prefix cache supplied."""

    @property
    def completion_tokens(self) -> int:
        return sum(choice.completion_tokens for choice in self.choices)
