"""What the engine deployment needs from its engine library, in one place.

The engine deployment (:mod:`deployments.engine.deployment`) speaks vLLM's public API. A simulated
engine (``model.simulated``, :mod:`deployments.engine.simulated`) speaks the same API without
importing vLLM, so the few vLLM types the deployment builds or catches come from here: vLLM's
for a real engine, the simulation's for a simulated one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class EngineBackend:
    """The types of one engine library the engine deployment uses."""

    sampling_params: Callable[..., Any]
    """Builds a request's sampling values (vLLM's ``SamplingParams``)."""
    structured_outputs: Callable[..., Any]
    """Builds structured-output constraints (vLLM's ``StructuredOutputsParams``)."""
    tokens_prompt: Callable[[list[int], str | None], Any]
    """Wraps a prompt's token ids and its prefix-cache salt (vLLM's ``TokensPrompt``)."""
    delta: Any
    """The output mode that yields only what is new (vLLM's ``RequestOutputKind.DELTA``)."""
    request_errors: tuple[type[BaseException], ...]
    """Raised for a request's bad values: answered 400."""
    dead_errors: tuple[type[BaseException], ...]
    """Raised when the engine itself died: the replica is unavailable."""


def vllm_backend() -> EngineBackend:
    """vLLM's types (imports vLLM)."""
    from vllm import SamplingParams, TokensPrompt
    from vllm.exceptions import VLLMClientError
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    from deployments.engine.vllm_private import engine_dead_error

    return EngineBackend(
        sampling_params=SamplingParams,
        structured_outputs=StructuredOutputsParams,
        tokens_prompt=lambda ids, salt: (TokensPrompt(prompt_token_ids=ids, cache_salt=salt) if salt
                                         else TokensPrompt(prompt_token_ids=ids)),
        delta=RequestOutputKind.DELTA,
        request_errors=(VLLMClientError, ValueError),
        dead_errors=(engine_dead_error(),),
    )
