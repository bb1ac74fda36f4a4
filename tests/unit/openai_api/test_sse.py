"""SSE framing (deployments/openai_api/sse.py): hand-built strings must still be exactly OpenAI's
JSON events, whatever the deltas (a property test, with hypothesis)."""

from __future__ import annotations

import asyncio
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from chat_formats.glm4 import ToolCallStreamParser
from deployments.core.generation import GenerationChunk, TokenLogprob
from deployments.openai_api.sse import DONE, StreamCounts, StreamEncoder, error_event, events


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
    event = _payload(StreamEncoder("chat", "c", "m").usage(7, 3, cached_tokens=4))
    assert event["choices"] == []
    assert event["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10,
                              "prompt_tokens_details": {"cached_tokens": 4}}


def test_error_event_and_done():
    event = _payload(error_event("engine died", "service_unavailable"))
    assert event == {"error": {"message": "engine died", "type": "service_unavailable", "param": None, "code": None}}
    assert DONE == b"data: [DONE]\n\n"


async def _aiter(items):
    for item in items:
        yield item


def _run(chunks, tool_names=None, include_usage=True, choices=1, kind="chat"):
    def new_parser():
        return ToolCallStreamParser(tool_names) if tool_names else None

    async def collect():
        counts = StreamCounts(prompt_tokens=9)
        out = [e async for e in events(chunks[0], _aiter(chunks[1:]), StreamEncoder(kind, "c", "m"), counts,
                                       new_parser, choices, include_usage)]
        return out, counts

    out, counts = asyncio.run(collect())
    assert out[-1] == DONE
    return [_payload(e) for e in out[:-1]], counts


def _text(payloads):
    return "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads if p["choices"])


def test_events_stream_text_and_usage():
    payloads, counts = _run([GenerationChunk("Hel", 1), GenerationChunk("lo", 2), GenerationChunk("", 1, "stop")])
    assert _text(payloads) == "Hello"
    assert payloads[-2]["choices"][0]["finish_reason"] == "stop"
    assert payloads[-1]["usage"] == {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13,
                                     "prompt_tokens_details": {"cached_tokens": 0}}
    assert counts.completion_tokens == 4


def test_events_turn_a_glm4_tool_call_into_a_tool_calls_delta():
    chunks = [GenerationChunk("get_wea", 2), GenerationChunk('ther\n{"city": ', 3),
              GenerationChunk('"北京"}', 2, "stop")]
    payloads, _ = _run(chunks, {"get_weather"}, include_usage=False)
    assert len(payloads) == 1, "nothing of the call leaks out as text"
    choice = payloads[0]["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["delta"]["tool_calls"][0]
    assert call["index"] == 0 and call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "北京"}'}
    assert choice["delta"]["role"] == "assistant" and choice["delta"]["content"] is None


def test_events_with_tools_release_text_that_is_not_a_call():
    chunks = [GenerationChunk("get_", 1), GenerationChunk("weather is sunny", 3), GenerationChunk(".", 1, "stop")]
    payloads, _ = _run(chunks, {"get_weather"}, include_usage=False)
    assert _text(payloads) == "get_weather is sunny."
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"


def test_events_with_invalid_call_json_send_the_text():
    chunks = [GenerationChunk("get_weather\n{oops", 4, "stop")]
    payloads, _ = _run(chunks, {"get_weather"}, include_usage=False)
    assert _text(payloads) == "get_weather\n{oops"
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"


def test_events_of_several_choices_carry_their_index_and_end_after_the_last():
    chunks = [GenerationChunk("A", 1, index=0), GenerationChunk("B", 1, index=1),
              GenerationChunk("a", 1, "stop", index=0), GenerationChunk("b", 1, "length", index=1),
              GenerationChunk("never", 1, index=2)]
    payloads, counts = _run(chunks, choices=2, include_usage=False)
    by_index: dict[int, str] = {}
    for p in payloads:
        choice = p["choices"][0]
        by_index[choice["index"]] = by_index.get(choice["index"], "") + choice["delta"]["content"]
        if choice["delta"]["content"] in ("A", "B"):
            assert choice["delta"]["role"] == "assistant", "each choice's first delta names the role"
    assert by_index == {0: "Aa", 1: "Bb"}
    assert [p["choices"][0]["finish_reason"] for p in payloads] == [None, None, "stop", "length"]
    assert counts.completion_tokens == 4, "nothing after the last choice finished is read"


def test_events_carry_logprobs_in_openai_shapes():
    lp = [TokenLogprob("Hi", -0.25, [("Hi", -0.25), ("Hey", -1.5)])]
    payloads, _ = _run([GenerationChunk("Hi", 1, "stop", logprobs=lp)], include_usage=False)
    content = payloads[0]["choices"][0]["logprobs"]["content"]
    assert content == [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105], "top_logprobs": [
        {"token": "Hi", "logprob": -0.25, "bytes": [72, 105]}, {"token": "Hey", "logprob": -1.5, "bytes": [72, 101, 121]}]}]
    chunks = [GenerationChunk("Hi", 1, logprobs=lp), GenerationChunk("!", 1, "stop", logprobs=[TokenLogprob("!", -2.0)])]
    payloads, _ = _run(chunks, include_usage=False, kind="text")
    second = payloads[1]["choices"][0]["logprobs"]
    assert second == {"tokens": ["!"], "token_logprobs": [-2.0], "top_logprobs": [{}], "text_offset": [2]}


@settings(max_examples=300, deadline=None)
@given(deltas=st.lists(st.text(), min_size=1, max_size=6), kind=st.sampled_from(["chat", "text"]))
def test_every_event_is_one_sse_line_of_json_and_the_text_survives(deltas, kind):
    async def collect():
        chunks = [GenerationChunk(d, 1) for d in deltas[:-1]] + [GenerationChunk(deltas[-1], 1, "stop")]

        async def rest():
            for c in chunks[1:]:
                yield c

        return [e async for e in events(chunks[0], rest(), StreamEncoder(kind, "id", "m"), StreamCounts(), )]

    out = asyncio.run(collect())
    assert out[-1] == DONE
    text = ""
    for event in out[:-1]:
        assert event.startswith(b"data: ") and event.endswith(b"\n\n") and b"\n" not in event[:-2]
        choice = json.loads(event[6:])["choices"][0]
        text += choice["delta"]["content"] if kind == "chat" else choice["text"]
    assert text == "".join(deltas)
