"""Property tests (hypothesis) of the two pieces every streamed byte passes through: the
SSE encoder and the GLM-4 tool-call stream parser."""

from __future__ import annotations

import asyncio
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from chat_formats.glm4 import ToolCall, ToolCallStreamParser, parse_tool_call
from deployments.core.generation import GenerationChunk
from deployments.openai_api.sse import DONE, StreamCounts, StreamEncoder, events

NAMES = ["get_weather", "get_time", "g"]


def _split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({min(c, len(text)) for c in cuts})
    pieces, start = [], 0
    for point in points + [len(text)]:
        pieces.append(text[start:point])
        start = point
    return pieces


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


CALLS = st.builds(lambda name, args: f"{name}\n{json.dumps(args, ensure_ascii=False)}",
                  st.sampled_from(NAMES), st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3))
REPLIES = st.one_of(CALLS, st.text(max_size=60), st.builds(lambda n, t: n + t, st.sampled_from(NAMES), st.text()))


@settings(max_examples=500, deadline=None)
@given(reply=REPLIES, cuts=st.lists(st.integers(0, 80), max_size=6))
def test_streaming_a_reply_in_any_pieces_gives_what_parsing_it_whole_gives(reply, cuts):
    parser = ToolCallStreamParser(NAMES)
    sent = "".join(parser.feed(piece) for piece in _split(reply, cuts))
    final = parser.finish()
    whole = parse_tool_call(reply, NAMES)
    if whole is None:
        assert isinstance(final, str) and sent + final == reply, "text is delivered whole and in order"
    else:
        assert sent == "", "nothing of a call leaks out as text"
        assert isinstance(final, ToolCall)
        assert (final.name, final.arguments) == (whole.name, whole.arguments)
