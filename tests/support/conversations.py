"""Tools and a demo history that the chat-format and client tests share."""

from __future__ import annotations

from glm_client import Conversation, Role

WEATHER_FUNCTION = {"name": "get_weather", "description": "天气", "parameters": {"type": "object", "properties": {}}}
"""A function as the composite demo's clients take their tools."""
HISTORY = [
    Conversation(Role.USER, "北京天气如何？"),
    Conversation(Role.TOOL, '{"city": "北京"}', metadata="get_weather"),
    Conversation(Role.OBSERVATION, '{"sky": "晴"}', metadata="get_weather"),
]
"""A demo history with a tool call and its observation."""

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather",
    "description": "查询城市天气 (weather of a city) 🌦",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "城市"}},
                   "required": ["city"]},
}}
"""An OpenAI tool, with non-ASCII text, as the server's chat formats take tools."""
