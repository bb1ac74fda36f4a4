"""vLLM's outputs as glm-serve's: a choice's text, tokens and logprobs gathered from deltas."""

from __future__ import annotations

from typing import Any

from deployments.core.generation import TokenLogprob


def token_logprobs(token_ids: Any, candidates: Any, top: int) -> list[TokenLogprob]:
    """OpenAI-style logprobs of generated tokens from vLLM's per-token candidate dicts
    (token id -> ``Logprob`` with ``logprob``, ``rank`` and ``decoded_token``)."""
    out = []
    for token_id, options in zip(token_ids, candidates or ()):
        chosen = options[token_id]
        ranked = sorted((o for o in options.values() if o.rank is not None and o.rank <= top), key=lambda o: o.rank)
        out.append(TokenLogprob(chosen.decoded_token or "", chosen.logprob,
                                [(o.decoded_token or "", o.logprob) for o in ranked]))
    return out



class ChoiceSoFar:
    """Text, tokens and logprobs of one choice gathered from vLLM's deltas: a chunk still
    filling (or an incomplete character) when streaming, the whole reply otherwise."""

    __slots__ = ("text", "tokens", "logprobs")

    def __init__(self) -> None:
        self.text, self.tokens, self.logprobs = "", 0, []

    def add(self, completion: Any, top_logprobs: int | None) -> ChoiceSoFar:
        """Append one of vLLM's DELTA outputs for this choice."""
        self.text += completion.text
        self.tokens += len(completion.token_ids)
        if top_logprobs is not None:
            self.logprobs += token_logprobs(completion.token_ids, completion.logprobs, top_logprobs)
        return self
