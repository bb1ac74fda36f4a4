"""The router's request caps (deployments/openai_api/request_limits.py): each names its field."""

from __future__ import annotations

import pytest

from deployments.config import RequestLimits
from deployments.core.errors import APIError
from deployments.openai_api.request_limits import check_limits
from deployments.openai_api.requests import ChatCompletionRequest


def _chat(**fields):
    return ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                                 **fields})


LIMITS = RequestLimits(max_messages=3, max_prompt_chars=100, max_tools=1, max_tool_chars=200,
                       max_stop_sequences=2, max_stop_chars=5)


@pytest.mark.parametrize("fields,status,param", [
    ({"messages": [{"role": "user", "content": "x"}] * 4}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "x" * 101}]}, 413, "messages"),
    ({"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(2)]}, 400, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "description": "d" * 300}}]}, 400, "tools.0"),
    ({"stop": ["a", "b", "c"]}, 400, "stop"),
    ({"stop": "toolong"}, 400, "stop"),
    ({"max_tokens": 11}, 400, "max_tokens"),
])
def test_each_cap_names_its_field(fields, status, param):
    parsed = _chat(**fields)
    with pytest.raises(APIError) as info:
        check_limits(LIMITS, 10, messages=parsed.messages, tools=parsed.tools, stop=parsed.stop,
                     max_tokens=parsed.output_limit)
    assert (info.value.status, info.value.param) == (status, param)
    assert param.split(".")[0] in info.value.message


def test_a_request_within_the_caps_passes_and_prompts_are_measured_in_characters():
    parsed = _chat(stop=["a", "b"], max_tokens=10)
    check_limits(LIMITS, 10, messages=parsed.messages, tools=parsed.tools, stop=parsed.stop, max_tokens=10)
    check_limits(LIMITS, None, prompt="y" * 100)
    with pytest.raises(APIError, match="prompt: 101 characters"):
        check_limits(LIMITS, None, prompt="y" * 101)


def test_a_whole_response_carries_a_bounded_number_of_log_probabilities():
    limits = RequestLimits()
    # n 4 x 2,000 tokens x 21: 168,000 entries, about 100 MB of dicts in the ingress.
    with pytest.raises(APIError) as info:
        check_limits(limits, None, choices=4, max_tokens=2000, logprobs=20)
    assert info.value.status == 400 and info.value.param == "top_logprobs"
    assert "168000" in info.value.message and "stream" in info.value.message
    check_limits(limits, None, choices=4, max_tokens=2000, logprobs=20, stream=True)  # leaves chunk by chunk
    check_limits(limits, None, choices=1, max_tokens=2000, logprobs=20)  # 42,000 entries
    with pytest.raises(APIError) as info:  # no max_tokens: bounded by what one request may generate
        check_limits(limits, None, logprobs=5, logprobs_param="logprobs")
    assert info.value.param == "logprobs"
