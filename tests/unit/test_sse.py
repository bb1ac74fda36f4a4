"""SSE framing: hand-built strings must still be exactly OpenAI's JSON events."""

from __future__ import annotations

import json

from deployments.sse import DONE, StreamEncoder, error_event


def _payload(event: bytes) -> dict:
    text = event.decode()
    assert text.startswith("data: ") and text.endswith("\n\n")
    return json.loads(text[len("data: "):])


def test_chat_chunks_carry_role_once_then_content():
    encoder = StreamEncoder("chat", "chatcmpl-1", "glm")
    first = _payload(encoder.text("Hel"))
    second = _payload(encoder.text('lo "\n\\ 你好 🙂', "stop"))
    assert first["object"] == "chat.completion.chunk" and first["id"] == "chatcmpl-1" and first["model"] == "glm"
    assert first["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": "Hel"},
                                 "logprobs": None, "finish_reason": None}]
    assert second["choices"][0]["delta"] == {"content": 'lo "\n\\ 你好 🙂'}
    assert second["choices"][0]["finish_reason"] == "stop"
    assert isinstance(first["created"], int)


def test_text_completion_chunks():
    encoder = StreamEncoder("text", "cmpl-1", "glm")
    event = _payload(encoder.text("abc", "length"))
    assert event["object"] == "text_completion"
    assert event["choices"] == [{"index": 0, "text": "abc", "logprobs": None, "finish_reason": "length"}]


def test_usage_event_has_empty_choices():
    event = _payload(StreamEncoder("chat", "c", "m").usage(7, 3))
    assert event["choices"] == []
    assert event["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def test_error_event_and_done():
    event = _payload(error_event("engine died", "service_unavailable"))
    assert event == {"error": {"message": "engine died", "type": "service_unavailable", "param": None, "code": None}}
    assert DONE == b"data: [DONE]\n\n"
