"""The OpenAI features apps rely on, end to end with the openai SDK and glm_client:
structured output, forced GLM-4 tool calls, several choices, logprobs, logit_bias, and a
400 for every field glm-serve does not implement.

Forced output runs on the tiny GLM-4 look-alike (tests/support/tiny_glm.py), whose rigged
logits make a grammar's output short and deterministic; the rest on SmolLM2.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from glm_client import Conversation, Role, ServeClient
from tests.support.e2e_cluster import API_KEY, MODEL_NAME, TINY_GLM_NAME, TINY_GLM_PREFIX

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "城市天气",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "description": "Current time",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]},
}}
ASK = [{"role": "user", "content": "北京天气如何？"}]
ANSWER_SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}, "sure": {"type": "boolean"}},
                 "required": ["answer", "sure"], "additionalProperties": False}
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in JSON."}]


def _schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


# ---- response_format -----------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output_parses_and_validates_on_glm4(glm_openai, stream):
    kwargs = dict(model=TINY_GLM_NAME, messages=ASK, max_tokens=64, temperature=0,
                  response_format=_schema_format(ANSWER_SCHEMA))
    if stream:
        chunks = list(glm_openai.chat.completions.create(stream=True, **kwargs))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    else:
        choice = glm_openai.chat.completions.create(**kwargs).choices[0]
        text, finish = choice.message.content, choice.finish_reason
    # Unconstrained, this model ends every reply at once with an empty text.
    jsonschema.validate(json.loads(text), ANSWER_SCHEMA)
    assert finish == "stop"


def test_json_object_output_parses_on_glm4(glm_openai):
    reply = glm_openai.chat.completions.create(model=TINY_GLM_NAME, messages=ASK, max_tokens=64, temperature=0,
                                               response_format={"type": "json_object"})
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_json_schema_output_on_a_real_model(openai_client):
    schema = {"type": "object", "properties": {"capital": {"type": "string", "enum": ["Paris", "Lyon", "Nice"]}},
              "required": ["capital"], "additionalProperties": False}
    reply = openai_client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=48,
                                                  temperature=0, response_format=_schema_format(schema))
    answer = json.loads(reply.choices[0].message.content)
    jsonschema.validate(answer, schema)
    assert answer["capital"] == "Paris"


def test_a_schema_the_grammar_cannot_take_is_a_400_and_the_service_keeps_serving(openai_client):
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.chat.completions.create(
            model=MODEL_NAME, messages=QUESTION, max_tokens=8,
            response_format=_schema_format({"type": "object", "properties": {"x": {"type": "nonsense"}}}))
    assert info.value.status_code == 400
    reply = openai_client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=4)
    assert reply.choices[0].message.content


# ---- forced tool calls ----------------------------------------------------------

def _check_call(call, name: str, tools: list[dict]) -> None:
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == name
    schema = next(t["function"]["parameters"] for t in tools if t["function"]["name"] == name)
    jsonschema.validate(json.loads(call.function.arguments), schema)


@pytest.mark.parametrize("tool_choice,name", [
    ("required", "get_time"),  # the grammar's first choice for this model; any tool would do
    ({"type": "function", "function": {"name": "get_weather"}}, "get_weather"),
])
def test_tool_choice_forces_a_glm4_call_whole(glm_openai, tool_choice, name):
    reply = glm_openai.chat.completions.create(model=TINY_GLM_NAME, messages=ASK, tools=[WEATHER, CLOCK],
                                               tool_choice=tool_choice, parallel_tool_calls=False,
                                               max_tokens=64, temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert len(choice.message.tool_calls) == 1
    _check_call(choice.message.tool_calls[0], name, [WEATHER, CLOCK])


def test_tool_choice_forces_a_glm4_call_streamed(glm_openai):
    chunks = list(glm_openai.chat.completions.create(
        model=TINY_GLM_NAME, messages=ASK, tools=[WEATHER, CLOCK], max_tokens=64, temperature=0, stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    calls = [call for c in chunks if c.choices for call in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].index == 0
    _check_call(calls[0], "get_weather", [WEATHER])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_serve_client_receives_a_forced_call_streamed(base_url):
    with ServeClient(base_url + TINY_GLM_PREFIX, api_key=API_KEY) as client:
        items = list(client.generate_stream([WEATHER["function"]], [Conversation(Role.USER, "北京天气如何？")],
                                            max_new_tokens=64, temperature=0, tool_choice="required"))
    response, history = items[-1]
    assert response["name"] == "get_weather"
    jsonschema.validate(response["parameters"], WEATHER["function"]["parameters"])
    assert history[-1]["metadata"] == "get_weather"


# ---- n, logprobs, logit_bias ------------------------------------------------------

def test_several_choices_whole_and_streamed(openai_client):
    kwargs = dict(model=MODEL_NAME, messages=QUESTION, max_tokens=12, temperature=1.0, seed=7, n=3)
    reply = openai_client.chat.completions.create(**kwargs)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.message.content for c in reply.choices)
    chunks = list(openai_client.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                                        **kwargs))
    texts: dict[int, str] = {}
    finished = set()
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finished.add(choice.index)
    assert sorted(texts) == [0, 1, 2] and finished == {0, 1, 2}
    assert all(texts.values())
    assert 3 <= chunks[-1].usage.completion_tokens <= 36


def test_chat_logprobs_whole_and_streamed(openai_client):
    kwargs = dict(model=MODEL_NAME, messages=QUESTION, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    reply = openai_client.chat.completions.create(**kwargs)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    assert "".join(t.token for t in content).startswith(reply.choices[0].message.content[:4])
    for token in content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert token.top_logprobs[0].logprob == pytest.approx(token.logprob, abs=1e-4)
    streamed = [t for c in openai_client.chat.completions.create(stream=True, **kwargs) if c.choices
                and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]


def test_completion_logprobs(openai_client):
    reply = openai_client.completions.create(model=MODEL_NAME, prompt="The capital of France is", max_tokens=5,
                                             temperature=0, logprobs=2)
    logprobs = reply.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 5
    assert "".join(logprobs.tokens) == reply.choices[0].text
    assert logprobs.text_offset[0] == 0 and all(len(top) <= 2 for top in logprobs.top_logprobs)


def test_logit_bias_steers_the_next_token(openai_client, tokenizer):
    token = tokenizer.encode(" banana", add_special_tokens=False)[0]
    reply = openai_client.completions.create(model=MODEL_NAME, prompt="The capital of France is", max_tokens=1,
                                             temperature=0, logit_bias={str(token): 100})
    assert reply.choices[0].text == tokenizer.decode([token])


# ---- fields glm-serve does not implement --------------------------------------------

@pytest.mark.parametrize("extra,param", [
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ({"web_search_options": {}}, "web_search_options"),
    ({"temprature": 0.5}, "temprature"),
])
def test_an_unimplemented_field_is_a_400_naming_it(openai_client, extra, param):
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=4, extra_body=extra)
    assert info.value.body["param"] == param
    assert param in info.value.body["message"]


def test_vllm_sampling_extras_keep_working(openai_client):
    reply = openai_client.chat.completions.create(
        model=MODEL_NAME, messages=QUESTION, max_tokens=6, temperature=0.7,
        extra_body={"top_k": 5, "min_p": 0.05, "repetition_penalty": 1.1, "ignore_eos": True})
    assert reply.usage.completion_tokens == 6 and reply.choices[0].finish_reason == "length"
