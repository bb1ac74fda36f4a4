"""What an engine replica makes of a request before vLLM sees it: the prompt's token ids
(rendered with the model's chat format) and, for a forced tool call, the grammar.

Both can be slow for a hostile or simply huge request, and the replica's event loop also
runs vLLM's output handling and sends every running stream's chunks: so large renders go
to a render thread, and grammars to a thread of their own, each with one worker (vLLM's own
server renders and tokenizes in a pool of one by default), so they queue there instead of
freezing every stream or taking every core.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from chat_formats import ChatFormat
from deployments.core.errors import APIError
from deployments.core.generation import GenerationRequest

INLINE_RENDER_MAX_SIZE = 16_384
"""Requests up to this :func:`render_size` are rendered and tokenized on the replica's
event loop; larger ones in the replica's render thread.

Why: the event loop also runs vLLM's output handling and sends every running stream's
chunks, and tokenizing is linear in the input, so inline, one huge request would freeze
every stream on the replica until it was refused as too long. The Rust tokenizer releases
the GIL, so the loop keeps running beside it. Small requests stay inline: they never
queue behind a huge one in the thread. What either costs:
docs/measurements.md#the-render-thread-for-huge-prompts."""


GRAMMAR_TIMEOUT_S = 10.0
"""Longest a forced tool call's grammar may take to build before the request gets 400."""


def render_size(request: GenerationRequest) -> int:
    """About how much text the chat template and the tokenizer must go through for
    ``request``: characters of content, tool calls and tools, a little per message (a
    template renders each one), or the length of a prompt string or token-id list."""
    if request.messages is None:
        return len(request.prompt or "")
    size = len(str(request.tools)) if request.tools else 0
    for message in request.messages:
        size += 32 + len(message.get("content") or "")
        for call in message.get("tool_calls") or ():
            size += len(str(call))
    return size


class RequestInput:
    """Renders requests and builds their grammars for one engine replica."""

    def __init__(self, chat_format: ChatFormat, tokenizer: Any) -> None:
        self._format, self._tokenizer = chat_format, tokenizer
        # This first encode settles the Rust tokenizer's padding/truncation state (an encode
        # may reset it, which needs exclusive access); afterwards the loop and the thread
        # only read it.
        tokenizer.encode("warm-up", add_special_tokens=False)
        self._render_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="glm-render")
        self._grammar_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="glm-grammar")

    def shutdown(self) -> None:
        for thread in (self._render_thread, self._grammar_thread):
            thread.shutdown(wait=False, cancel_futures=True)

    async def structured(self, request: GenerationRequest) -> dict[str, Any] | None:
        """vLLM's structured-output fields: the request's own, or for a forced tool call the
        grammar of its tools, built in the grammar thread within :data:`GRAMMAR_TIMEOUT_S`
        (the router already refused schemas past its caps: deployments/openai_api/schema_limits.py)."""
        if not request.force_tool_call:
            return request.structured
        building = asyncio.get_running_loop().run_in_executor(
            self._grammar_thread, self._format.tool_call_grammar, request.tools or [])
        try:
            return {"grammar": await asyncio.wait_for(building, GRAMMAR_TIMEOUT_S)}
        except asyncio.TimeoutError:
            raise APIError(400, f"tools: the forced tool call's grammar took more than {GRAMMAR_TIMEOUT_S:g} s to "
                                "build; simplify the tools' parameter schemas.", param="tools",
                           code="schema_too_complex") from None
        except ValueError as exc:
            raise APIError(400, f"tools: {exc}", param="tools") from None

    async def render(self, request: GenerationRequest) -> tuple[str | None, list[int]]:
        """:meth:`render_now`, in the render thread when the request is large."""
        if render_size(request) <= INLINE_RENDER_MAX_SIZE:
            return self.render_now(request)
        return await asyncio.get_running_loop().run_in_executor(self._render_thread, self.render_now, request)

    def render_now(self, request: GenerationRequest) -> tuple[str | None, list[int]]:
        """(prompt text, token ids) of a request; the text is None for a token-id prompt."""
        if request.messages is not None:
            try:
                text = self._format.render(request.messages, request.tools, self._tokenizer)
            except Exception as exc:  # jinja raises TemplateError and friends: the input's fault
                raise APIError(400, f"The chat format could not render these messages: {exc}",
                                     param="messages") from None
            # The prompt already holds its special tokens ([gMASK]<sop>, BOS, role markers).
            return text, self._tokenizer.encode(text, add_special_tokens=False)
        if isinstance(request.prompt, str):
            return request.prompt, self._tokenizer.encode(request.prompt)
        vocab = len(self._tokenizer)
        ids = list(request.prompt or [])
        bad = [t for t in ids if t < 0 or t >= vocab]
        if bad:
            raise APIError(400, f"Token ids out of the vocabulary (size {vocab}): {bad[:5]}", param="prompt")
        return None, ids
