"""GLM-4's format and OpenAI tools end to end, on the tiny GLM-4 look-alike (tests/support/tiny_glm.py)."""

from __future__ import annotations

import json

import pytest

from chat_formats.glm4 import render_prompt
from tests.support.e2e_cluster import MODEL_NAME, TINY_GLM_NAME

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "城市天气",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}}
HISTORY = [
    {"role": "user", "content": "北京天气如何？"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "晴"}'},
]


@pytest.fixture(scope="module")
def glm_tokenizer(server):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(server["tiny_glm_dir"])


def test_tokenize_shows_the_glm4_prompt_with_tools_and_tool_turns(glm_http, glm_tokenizer):
    response = glm_http.post("/tokenize", json={"model": TINY_GLM_NAME, "messages": HISTORY, "tools": [WEATHER]})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = render_prompt(HISTORY, [WEATHER])
    assert body["prompt"] == expected
    assert "<|assistant|>get_weather\n{\"city\": \"北京\"}<|observation|>\n{\"sky\": \"晴\"}<|assistant|>" in expected
    assert body["tokens"] == glm_tokenizer.encode(expected, add_special_tokens=False)
    assert body["tokens"][:2] == [151331, 151333]  # [gMASK] <sop>
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == 8192


def test_glm4_stop_ids_are_honoured_with_tools(glm_openai):
    # The rigged model answers <|user|> first: a GLM-4 stop id that is not the tokenizer's eos.
    reply = glm_openai.chat.completions.create(model=TINY_GLM_NAME, messages=HISTORY, tools=[WEATHER],
                                               max_tokens=20, temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert reply.usage.completion_tokens == 1
    assert choice.message.tool_calls is None


def test_glm4_stream_with_tools_ends_cleanly(glm_http):
    body = {"model": TINY_GLM_NAME, "messages": HISTORY, "tools": [WEATHER], "tool_choice": "auto",
            "max_tokens": 20, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    with glm_http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert payloads[-1]["usage"]["completion_tokens"] == 1
    assert payloads[-2]["choices"][0]["finish_reason"] == "stop"


def test_glm4_tool_choice_naming_an_unknown_tool_is_400(glm_http):
    body = {"model": TINY_GLM_NAME, "messages": HISTORY, "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "nope"}}}
    response = glm_http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tool_choice"


def test_template_model_refuses_tools_clearly(http):
    response = http.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": HISTORY[:1],
                                                       "tools": [WEATHER]})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tools"
    assert http.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": HISTORY[:1],
                                                   "max_tokens": 2}).status_code == 200


def test_tokenize_on_the_template_model_matches_its_chat_template(http, tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    body = http.post("/tokenize", json={"model": MODEL_NAME, "messages": messages}).json()
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert body["prompt"] == expected
    assert body["tokens"] == tokenizer.encode(expected, add_special_tokens=False)
    prompt = http.post("/tokenize", json={"model": MODEL_NAME, "prompt": "Hello"}).json()
    assert prompt["tokens"] == tokenizer.encode("Hello")
    assert http.post("/tokenize", json={"model": MODEL_NAME}).status_code == 400
