"""Server-sent-event framing for streamed OpenAI responses.

This is the per-token hot path of the router, so it formats strings from prebuilt
templates: only the text delta goes through ``json.dumps``. The output is
byte-for-byte valid OpenAI ``chat.completion.chunk`` / ``text_completion`` events.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Literal

from deployments.generation import GenerationChunk
from deployments.protocol import error_body, usage
from glm_client.glm4 import ToolCall, ToolCallStreamParser

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
        self._sent_role = False

    def text(self, text: str, finish_reason: str | None = None) -> bytes:
        """One event carrying a text delta (and the finish reason, on the last one)."""
        finish = "null" if finish_reason is None else json.dumps(finish_reason)
        if self._chat:
            if self._sent_role:
                delta = '{"content":' + json.dumps(text, ensure_ascii=False) + "}"
            else:
                # The first delta also names the role, as OpenAI's first chunk does.
                delta = '{"role":"assistant","content":' + json.dumps(text, ensure_ascii=False) + "}"
                self._sent_role = True
            choice = '{"index":0,"delta":' + delta + ',"logprobs":null,"finish_reason":' + finish + "}"
        else:
            choice = ('{"index":0,"text":' + json.dumps(text, ensure_ascii=False)
                      + ',"logprobs":null,"finish_reason":' + finish + "}")
        return (self._head + ',"choices":[' + choice + "]}\n\n").encode()

    def tool_call(self, call: dict, finish_reason: str = "tool_calls") -> bytes:
        """One event carrying a whole tool call (``call`` is an OpenAI tool_calls entry with index)."""
        delta: dict = {"content": None, "tool_calls": [call]}
        if not self._sent_role:
            delta = {"role": "assistant", **delta}
            self._sent_role = True
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return (self._head + ',"choices":[' + json.dumps(choice, ensure_ascii=False) + "]}\n\n").encode()

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The closing usage event of ``stream_options.include_usage``: ``choices`` is empty."""
        payload = json.dumps(usage(prompt_tokens, completion_tokens), separators=(",", ":"))
        return (self._head + ',"choices":[],"usage":' + payload + "}\n\n").encode()


def error_event(message: str, type: str = "server_error", code: str | None = None) -> bytes:
    """An error after the stream began: the status line is gone, so it travels as an event."""
    return b"data: " + json.dumps(error_body(message, type, None, code), ensure_ascii=False).encode() + b"\n\n"


class StreamCounts:
    """Token counts of a stream, readable by the caller after (or during) iteration."""

    def __init__(self, prompt_tokens: int = 0) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0


def _closing(encoder: StreamEncoder, parser: ToolCallStreamParser | None, text: str,
             finish_reason: str | None) -> list[bytes]:
    """The last events of a reply: its last text (and whatever the parser held back) or
    the tool call the parser found."""
    final = parser.finish() if parser else ""
    if isinstance(final, ToolCall):
        return ([encoder.text(text)] if text else []) + [encoder.tool_call(final.openai(index=0))]
    if text or final or finish_reason is not None:
        return [encoder.text(text + final, finish_reason)]
    return []


async def events(first: GenerationChunk, rest: AsyncIterator[GenerationChunk], encoder: StreamEncoder,
                 counts: StreamCounts, tool_names: set[str] | None = None,
                 include_usage: bool = False) -> AsyncIterator[bytes]:
    """Turn the engine's chunks into SSE events, ending with usage (if asked) and [DONE].

    With ``tool_names``, text is held back only while it may still become a GLM-4 tool
    call; a finished call goes out as one ``tool_calls`` delta with finish reason
    ``tool_calls``.
    """
    parser = ToolCallStreamParser(tool_names) if tool_names else None
    chunk = first
    while True:
        counts.completion_tokens += chunk.num_tokens
        text = parser.feed(chunk.text) if parser else chunk.text
        if chunk.finish_reason is not None:
            for event in _closing(encoder, parser, text, chunk.finish_reason):
                yield event
            break
        if text:
            yield encoder.text(text)
        try:
            chunk = await rest.__anext__()
        except StopAsyncIteration:  # ended without a finish reason: release what is held
            for event in _closing(encoder, parser, "", None):
                yield event
            break
    if include_usage:
        yield encoder.usage(counts.prompt_tokens, counts.completion_tokens)
    yield DONE
