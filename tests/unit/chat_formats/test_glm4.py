"""GLM-4's format (glm_client/src/chat_formats/glm4.py), byte for byte against glm-4-9b-chat's
own chat template (tests/fixtures), and its tool-call parser, whole and streamed (with a
property test, hypothesis)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from chat_formats import glm4
from chat_formats.glm4 import ToolCall, ToolCallStreamParser, parse_tool_call, render_prompt
from tests.support.conversations import WEATHER_TOOL
from tests.support.paths import FIXTURES

TEMPLATE = (FIXTURES / "glm4_9b_chat_template.jinja").read_text()

CLOCK = {"type": "function", "function": {"name": "get_time", "description": "Current time <UTC> & zone",
                                          "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def reference():
    """Render the reference template the way vLLM does: transformers' apply_chat_template."""
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"x": 0}, unk_token="x")))

    def render(template_messages, add_generation_prompt=True):
        return tokenizer.apply_chat_template(template_messages, chat_template=TEMPLATE, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)

    return render


CASES = {
    "plain": ([{"role": "user", "content": "你好"}], None,
              [{"role": "user", "content": "你好"}]),
    "system-prompt": ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], None,
                      [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]),
    "multi-turn": (
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! 😀"},
         {"role": "user", "content": "Line one\nline two"}], None,
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! 😀"},
         {"role": "user", "content": "Line one\nline two"}]),
    "empty-content-is-skipped": (
        [{"role": "user", "content": ""}, {"role": "user", "content": "again"}], None,
        [{"role": "user", "content": ""}, {"role": "user", "content": "again"}]),
    "tools": ([{"role": "user", "content": "北京天气如何？"}], [WEATHER_TOOL, CLOCK],
              [{"role": "system", "content": "", "tools": [WEATHER_TOOL, CLOCK]},
               {"role": "user", "content": "北京天气如何？"}]),
    "tools-and-system": (
        [{"role": "system", "content": "Answer in English."}, {"role": "user", "content": "Weather?"}], [WEATHER_TOOL],
        [{"role": "system", "content": "", "tools": [WEATHER_TOOL]},
         {"role": "system", "content": "Answer in English."}, {"role": "user", "content": "Weather?"}]),
    "tool-call-and-observation": (
        [{"role": "user", "content": "北京天气如何？"},
         {"role": "assistant", "content": None, "tool_calls": [
             {"id": "call_1", "type": "function",
              "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}]},
         {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 25, "sky": "晴"}'},
         {"role": "assistant", "content": "北京今天晴，25度。"},
         {"role": "user", "content": "谢谢 🙏"}],
        [WEATHER_TOOL],
        [{"role": "system", "content": "", "tools": [WEATHER_TOOL]},
         {"role": "user", "content": "北京天气如何？"},
         {"role": "assistant", "metadata": "get_weather", "content": '{"city": "北京"}'},
         {"role": "observation", "content": '{"temperature": 25, "sky": "晴"}'},
         {"role": "assistant", "content": "北京今天晴，25度。"},
         {"role": "user", "content": "谢谢 🙏"}]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_render_matches_reference_template_byte_for_byte(reference, name):
    messages, tools, template_messages = CASES[name]
    assert render_prompt(messages, tools) == reference(template_messages)
    assert render_prompt(messages, tools, add_generation_prompt=False) == reference(template_messages, False)


def test_rendered_prompt_has_glm4_landmarks():
    text = render_prompt([{"role": "user", "content": "北京天气如何？"}], [WEATHER_TOOL])
    assert text.startswith("[gMASK]<sop><|system|>\n") and text.endswith("<|user|>\n北京天气如何？<|assistant|>")
    assert "# 可用工具\n## get_weather\n\n{\n    \"name\": \"get_weather\"" in text
    assert "城市" in text, "non-ASCII must be kept, not escaped"


def test_unknown_role_is_refused():
    with pytest.raises(ValueError, match="wizard"):
        render_prompt([{"role": "wizard", "content": "x"}])


def test_special_token_ids_and_stop_ids():
    assert glm4.SPECIAL_TOKEN_IDS["<|observation|>"] == 151338
    assert set(glm4.STOP_TOKEN_IDS) == {151329, 151336, 151338}


NAMES = {"get_weather", "get_time"}


PARSE_CASES = [
    ("call", 'get_weather\n{"city": "Beijing"}', ("get_weather", {"city": "Beijing"})),
    ("call-with-spaces", ' get_weather \n  {"city": "北京"}  ', ("get_weather", {"city": "北京"})),
    ("empty-arguments", "get_time\n{}", ("get_time", {})),
    ("text-starting-with-a-tool-name", "get_weather is a function I can call.", None),
    ("tool-name-then-prose", "get_weather\nI would call it, but I won't.", None),
    ("invalid-json", 'get_weather\n{"city": Beijing}', None),
    ("json-not-an-object", "get_weather\n[1, 2]", None),
    ("trailing-text", 'get_weather\n{"city": "Beijing"} and then some', None),
    ("unknown-name", 'get_stock\n{"ticker": "X"}', None),
    ("plain-text", "The weather is fine.", None),
    ("empty", "", None),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES])
def test_parse_tool_call(text, expected):
    call = parse_tool_call(text, NAMES)
    if expected is None:
        assert call is None
    else:
        assert (call.name, call.parameters) == expected
        assert json.loads(call.openai()["function"]["arguments"]) == expected[1]
        assert call.openai()["id"].startswith("call_")


def _stream(text: str, cuts: list[int]) -> tuple[str, object]:
    parser = ToolCallStreamParser(NAMES)
    sent = []
    bounds = [0, *cuts, len(text)]
    for a, b in zip(bounds, bounds[1:]):
        sent.append(parser.feed(text[a:b]))
    return "".join(sent), parser.finish()


@pytest.mark.parametrize("text,expected", [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES])
def test_streaming_split_at_every_boundary_agrees_with_one_shot(text, expected):
    for cut in range(len(text) + 1):
        for cuts in ([cut], list(range(1, len(text)))):
            sent, final = _stream(text, cuts)
            if expected is None:
                assert isinstance(final, str)
                assert sent + final == text, (cuts, sent, final)
            else:
                assert sent == "", "nothing of a tool call may leak out as text"
                assert (final.name, final.parameters) == expected


def test_streaming_releases_text_as_soon_as_it_cannot_be_a_call():
    parser = ToolCallStreamParser(NAMES)
    assert parser.feed("get_") == ""
    assert parser.feed("wea") == ""
    assert parser.feed("ther is sunny") == "get_weather is sunny"
    assert parser.feed(" today") == " today"
    assert parser.finish() == ""


def test_no_tools_means_no_holding_back():
    parser = ToolCallStreamParser(set())
    assert parser.feed("get_weather\n{}") == "get_weather\n{}"
    assert parser.finish() == ""


PROPERTY_NAMES = ["get_weather", "get_time", "g"]


def _split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({min(c, len(text)) for c in cuts})
    pieces, start = [], 0
    for point in points + [len(text)]:
        pieces.append(text[start:point])
        start = point
    return pieces


CALLS = st.builds(lambda name, args: f"{name}\n{json.dumps(args, ensure_ascii=False)}",
                  st.sampled_from(PROPERTY_NAMES),
                  st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3))
REPLIES = st.one_of(CALLS, st.text(max_size=60),
                    st.builds(lambda n, t: n + t, st.sampled_from(PROPERTY_NAMES), st.text()))


@settings(max_examples=500, deadline=None)
@given(reply=REPLIES, cuts=st.lists(st.integers(0, 80), max_size=6))
def test_streaming_a_reply_in_any_pieces_gives_what_parsing_it_whole_gives(reply, cuts):
    parser = ToolCallStreamParser(PROPERTY_NAMES)
    sent = "".join(parser.feed(piece) for piece in _split(reply, cuts))
    final = parser.finish()
    whole = parse_tool_call(reply, PROPERTY_NAMES)
    if whole is None:
        assert isinstance(final, str) and sent + final == reply, "text is delivered whole and in order"
    else:
        assert sent == "", "nothing of a call leaks out as text"
        assert isinstance(final, ToolCall)
        assert (final.name, final.arguments) == (whole.name, whole.arguments)
