"""Server-sent-event framing for streamed OpenAI responses.

This is the per-token hot path of the router, so it formats strings from prebuilt
templates: only the text delta goes through ``json.dumps``. The output is
byte-for-byte valid OpenAI ``chat.completion.chunk`` / ``text_completion`` events.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Literal

from chat_formats import ToolCallParser
from deployments.core.errors import error_body
from deployments.core.generation import GenerationChunk, TokenLogprob
from deployments.openai_api.responses import chat_logprobs, completion_logprobs, usage

DONE = b"data: [DONE]\n\n"


class StreamEncoder:
    """Encodes the events of one streamed response.

    ``kind`` is ``"chat"`` (``chat.completion.chunk``, text under ``delta.content``) or
    ``"text"`` (``text_completion``, text under ``text``).
    """

    def __init__(self, kind: Literal["chat", "text"], request_id: str, model: str):
        self.request_id = request_id
        self._chat = kind == "chat"
        obj = "chat.completion.chunk" if self._chat else "text_completion"
        head = json.dumps({"id": request_id, "object": obj, "created": int(time.time()), "model": model})
        self._head = "data: " + head[:-1]  # everything up to the closing brace, reused per event
        self._sent_role: set[int] = set()  # choices whose first delta named the role
        self._text_offset: dict[int, int] = {}  # completions logprobs: characters sent per choice

    def text(self, text: str, finish_reason: str | None = None, index: int = 0,
             logprobs: list[TokenLogprob] | None = None) -> bytes:
        """One event carrying a text delta of choice ``index`` (and the finish reason, on its last one)."""
        finish = "null" if finish_reason is None else json.dumps(finish_reason)
        lp = "null" if logprobs is None else self._logprobs(index, logprobs)
        if self._chat:
            if index in self._sent_role:
                delta = '{"content":' + json.dumps(text, ensure_ascii=False) + "}"
            else:
                # A choice's first delta also names the role, as OpenAI's first chunk does.
                delta = '{"role":"assistant","content":' + json.dumps(text, ensure_ascii=False) + "}"
                self._sent_role.add(index)
            choice = ('{"index":' + str(index) + ',"delta":' + delta + ',"logprobs":' + lp
                      + ',"finish_reason":' + finish + "}")
        else:
            choice = ('{"index":' + str(index) + ',"text":' + json.dumps(text, ensure_ascii=False)
                      + ',"logprobs":' + lp + ',"finish_reason":' + finish + "}")
        return (self._head + ',"choices":[' + choice + "]}\n\n").encode()

    def _logprobs(self, index: int, tokens: list[TokenLogprob]) -> str:
        if self._chat:
            return json.dumps(chat_logprobs(tokens), ensure_ascii=False)
        offset = self._text_offset.get(index, 0)
        self._text_offset[index] = offset + sum(len(t.token) for t in tokens)
        return json.dumps(completion_logprobs(tokens, offset), ensure_ascii=False)

    def tool_call(self, call: dict, finish_reason: str = "tool_calls", index: int = 0) -> bytes:
        """One event carrying a whole tool call (``call`` is an OpenAI tool_calls entry with index)."""
        delta: dict = {"content": None, "tool_calls": [call]}
        if index not in self._sent_role:
            delta = {"role": "assistant", **delta}
            self._sent_role.add(index)
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return (self._head + ',"choices":[' + json.dumps(choice, ensure_ascii=False) + "]}\n\n").encode()

    def usage(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> bytes:
        """The closing usage event of ``stream_options.include_usage``: ``choices`` is empty."""
        payload = json.dumps(usage(prompt_tokens, completion_tokens, cached_tokens), separators=(",", ":"))
        return (self._head + ',"choices":[],"usage":' + payload + "}\n\n").encode()


def error_event(message: str, type: str = "server_error", code: str | None = None) -> bytes:
    """An error after the stream began: the status line is gone, so it travels as an event."""
    return b"data: " + json.dumps(error_body(message, type, None, code), ensure_ascii=False).encode() + b"\n\n"


class StreamCounts:
    """Token counts of a stream, readable by the caller after (or during) iteration."""

    def __init__(self, prompt_tokens: int = 0, cached_tokens: int = 0) -> None:
        self.prompt_tokens = prompt_tokens
        self.cached_tokens = cached_tokens
        self.completion_tokens = 0


def _closing(encoder: StreamEncoder, parser: ToolCallParser | None, chunk: GenerationChunk, text: str,
             finish_reason: str | None) -> list[bytes]:
    """The last events of a choice: its last text (and whatever the parser held back) or
    the tool call the parser found."""
    final = parser.finish() if parser else ""
    if final and not isinstance(final, str):
        head = [encoder.text(text, index=chunk.index, logprobs=chunk.logprobs)] if text else []
        return head + [encoder.tool_call(final.openai(index=0), index=chunk.index)]
    if text or final or finish_reason is not None:
        return [encoder.text(text + final, finish_reason, chunk.index, chunk.logprobs)]
    return []


async def events(first: GenerationChunk, rest: AsyncIterator[GenerationChunk], encoder: StreamEncoder,
                 counts: StreamCounts, new_parser: Callable[[], ToolCallParser | None] = lambda: None,
                 choices: int = 1, include_usage: bool = False) -> AsyncIterator[bytes]:
    """Turn the engine's chunks of ``choices`` choices into SSE events, ending with usage
    (if asked) and [DONE].

    ``new_parser`` gives each choice its tool-call parser (or None): text is held back
    only while it may still become a tool call, and a finished call goes out as one
    ``tool_calls`` delta with finish reason ``tool_calls``.
    """
    parsers: dict[int, ToolCallParser | None] = {}
    unfinished = choices
    chunk = first
    while True:
        counts.completion_tokens += chunk.num_tokens
        if chunk.index not in parsers:
            parsers[chunk.index] = new_parser()
        parser = parsers[chunk.index]
        text = parser.feed(chunk.text) if parser else chunk.text
        if chunk.finish_reason is not None:
            for event in _closing(encoder, parser, chunk, text, chunk.finish_reason):
                yield event
            unfinished -= 1
            if unfinished == 0:
                break
        elif text or chunk.logprobs:
            yield encoder.text(text, index=chunk.index, logprobs=chunk.logprobs)
        try:
            chunk = await rest.__anext__()
        except StopAsyncIteration:  # ended without every finish reason: release what is held
            for index, held in parsers.items():
                for event in _closing(encoder, held, GenerationChunk("", 0, index=index), "", None):
                    yield event
            break
    if include_usage:
        yield encoder.usage(counts.prompt_tokens, counts.completion_tokens, counts.cached_tokens)
    yield DONE
