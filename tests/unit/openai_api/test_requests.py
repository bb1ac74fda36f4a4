"""OpenAI request validation (deployments/openai_api/requests.py), no server needed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deployments.core.errors import APIError
from deployments.openai_api.requests import ChatCompletionRequest, CompletionRequest, from_validation_error

BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _refusal(cls, body) -> APIError:
    with pytest.raises(ValidationError) as info:
        cls.model_validate(body)
    return from_validation_error(info.value)


@pytest.mark.parametrize(
    "change,param",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 2}, "min_p"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": -1}, "max_completion_tokens"),
        ({"max_tokens": 10**400}, "max_tokens"),  # past a float: once a 500 from the quota arithmetic
        ({"max_completion_tokens": 2**31}, "max_completion_tokens"),
        ({"top_k": 10**30}, "top_k"),
        ({"n": 0}, "n"),
        ({"n": 17}, "n"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"hello": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"audio": {"voice": "alloy"}}, "audio"),
        ({"store": True}, "store"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"stop": ["ok", ""]}, "stop"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
         "messages.0.content"),
        ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools.0"),
        ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools.0.type"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "g"}},
          "tools": [{"type": "function", "function": {"name": "f"}}]}, "tool_choice"),
    ],
)
def test_chat_refusals_name_the_field(change, param):
    error = _refusal(ChatCompletionRequest, {**BASE, **change})
    assert error.status == 400
    assert error.param == param
    assert error.body() == {"error": {"message": error.message, "type": "invalid_request_error",
                                      "param": param, "code": None}}
    assert param.split(".")[0] in error.message


def test_sampling_kwargs_only_carry_what_the_client_set():
    request = ChatCompletionRequest.model_validate({**BASE, "temperature": 0, "stop": "END", "seed": 3})
    assert request.sampling_kwargs() == {"temperature": 0, "stop": ["END"], "seed": 3}
    assert ChatCompletionRequest.model_validate(BASE).sampling_kwargs() == {}


def test_max_completion_tokens_wins_over_max_tokens():
    request = ChatCompletionRequest.model_validate({**BASE, "max_tokens": 9, "max_completion_tokens": 4})
    assert request.output_limit == 4
    assert ChatCompletionRequest.model_validate({**BASE, "max_tokens": 9}).output_limit == 9


def test_messages_render_for_the_chat_template():
    request = ChatCompletionRequest.model_validate({**BASE, "messages": [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None},
    ]})
    assert [m.as_template_message() for m in request.messages] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": ""},
    ]


def test_unimplemented_openai_fields_pass_only_when_they_ask_for_nothing():
    request = ChatCompletionRequest.model_validate({**BASE, "metadata": None, "store": False, "audio": None,
                                                    "parallel_tool_calls": False})
    assert request.model == "m"
    assert "not supported" in _refusal(ChatCompletionRequest, {**BASE, "metadata": {"x": 1}}).message
    assert "unrecognized" in _refusal(ChatCompletionRequest, {**BASE, "temprature": 1}).message
    assert _refusal(CompletionRequest, {"model": "m", "prompt": "x", "best_of": 3}).param == "best_of"
    assert CompletionRequest.model_validate({"model": "m", "prompt": "x", "best_of": 1, "echo": False}).prompt == "x"


def test_new_features_become_engine_fields():
    request = ChatCompletionRequest.model_validate({
        **BASE, "n": 2, "logprobs": True, "top_logprobs": 3, "logit_bias": {"7": -100},
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}},
        "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"})
    assert request.sampling_kwargs() == {"n": 2, "logit_bias": {7: -100}}
    assert request.logprobs_count == 3 and request.force_tool_call
    assert request.response_format.structured() == {"json": {"type": "object"}}
    assert ChatCompletionRequest.model_validate(
        {**BASE, "response_format": {"type": "json_object"}}).response_format.structured() == {"json_object": True}
    plain = ChatCompletionRequest.model_validate(BASE)
    assert plain.logprobs_count is None and not plain.force_tool_call
    assert ChatCompletionRequest.model_validate({**BASE, "logprobs": True}).logprobs_count == 0


def test_completion_prompt_forms():
    assert CompletionRequest.model_validate({"model": "m", "prompt": ["one"]}).prompt == "one"
    assert CompletionRequest.model_validate({"model": "m", "prompt": [1, 2]}).prompt == [1, 2]
    assert CompletionRequest.model_validate({"model": "m", "prompt": "x"}).max_tokens == 16
    assert _refusal(CompletionRequest, {"model": "m", "prompt": ["a", "b"]}).param == "prompt"
    assert _refusal(CompletionRequest, {"model": "m", "prompt": []}).param == "prompt"
    assert _refusal(CompletionRequest, {"model": "m", "prompt": "x", "echo": True}).param == "echo"


TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {}}},
         {"type": "function", "function": {"name": "g", "description": "d"}}]


def test_active_tools_follow_tool_choice():
    def active(choice):
        body = {**BASE, "tools": TOOLS} if choice is ... else {**BASE, "tools": TOOLS, "tool_choice": choice}
        return ChatCompletionRequest.model_validate(body).active_tools()

    assert active(...) == TOOLS
    assert active("auto") == TOOLS
    assert active("none") is None
    assert active({"type": "function", "function": {"name": "g"}}) == [TOOLS[1]]
    assert ChatCompletionRequest.model_validate(BASE).active_tools() is None


def test_tool_history_renders_for_the_template():
    request = ChatCompletionRequest.model_validate({**BASE, "messages": [
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]})
    call, result = [m.as_template_message() for m in request.messages]
    assert call["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}
    assert result == {"role": "tool", "content": "42", "tool_call_id": "c1"}
