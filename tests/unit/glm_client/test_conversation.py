"""The composite demo's conversation API (glm_client/src/glm_client/conversation.py)."""

from __future__ import annotations

import pytest

from glm_client import Role, process_input
from glm_client.conversation import build_system_prompt, process_response, to_openai
from tests.support.conversations import HISTORY, WEATHER_FUNCTION, WEATHER_TOOL


def test_process_input_and_to_openai():
    chat_history = process_input(HISTORY, [WEATHER_FUNCTION])
    assert chat_history[0] == {"role": "system", "content": "",
                               "tools": [{"type": "function", "function": WEATHER_FUNCTION}]}
    assert chat_history[2] == {"role": "assistant", "content": '{"city": "北京"}', "metadata": "get_weather"}
    messages, tools = to_openai(chat_history)
    assert tools == [{"type": "function", "function": WEATHER_FUNCTION}]
    assert messages[0] == {"role": "user", "content": "北京天气如何？"}
    assert messages[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "北京"}'}
    assert messages[2] == {"role": "tool", "tool_call_id": messages[1]["tool_calls"][0]["id"],
                           "content": '{"sky": "晴"}'}


def test_role_strings_and_system_prompt():
    assert str(Role.TOOL) == "<|assistant|>" and str(Role.OBSERVATION) == "<|observation|>"
    prompt = build_system_prompt([], [WEATHER_FUNCTION])
    assert "# 可用工具" in prompt and "## get_weather" in prompt and "当前日期" in prompt
    with pytest.raises(ValueError, match="python"):
        build_system_prompt(["python"], [])


def test_process_response_keeps_the_composite_demo_contract():
    history = [{"role": "system", "content": "", "tools": [WEATHER_TOOL]}, {"role": "user", "content": "天气？"}]
    reply, new_history = process_response('get_weather\n{"city": "北京"}', history)
    assert reply == {"name": "get_weather", "parameters": {"city": "北京"}}
    assert new_history[-1] == {"role": "assistant", "metadata": "get_weather", "content": '{"city": "北京"}'}
    assert len(history) == 2, "the caller's history is not modified"
    text, text_history = process_response("  晴天。 ", history)
    assert text == "晴天。" and text_history[-1]["content"] == "晴天。"
