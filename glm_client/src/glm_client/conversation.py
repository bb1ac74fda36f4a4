"""The GLM-4 composite demo's conversation API: ``Role``, ``Conversation``,
``build_system_prompt``, ``process_input`` and ``process_response``, with the same
names and meaning, minus the Streamlit display code.

``process_input`` turns a demo history into GLM-4 message dicts (``role``, ``content``,
optional ``metadata``); :func:`to_openai` turns those into OpenAI messages and tools
for the HTTP API, so an app written against the demo works in-process and over HTTP.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import Enum, auto
from typing import Any

from chat_formats.glm4 import (
    CALL_INSTRUCTION,
    SELF_INTRODUCTION,
    TOOLS_HEADING,
    function_of,
    parse_tool_call,
    tool_names,
)

__all__ = ["Role", "Conversation", "build_system_prompt", "process_input", "process_response", "to_openai"]

DATE_PROMPT = "当前日期: %Y-%m-%d"


class Role(Enum):
    """Who speaks a turn. ``TOOL`` is an assistant turn that calls a tool."""

    SYSTEM = auto()
    USER = auto()
    ASSISTANT = auto()
    TOOL = auto()
    OBSERVATION = auto()

    def __str__(self) -> str:
        return {
            Role.SYSTEM: "<|system|>",
            Role.USER: "<|user|>",
            Role.ASSISTANT: "<|assistant|>",
            Role.TOOL: "<|assistant|>",
            Role.OBSERVATION: "<|observation|>",
        }[self]


@dataclass
class Conversation:
    """One turn of a demo history. For a ``TOOL`` turn, ``metadata`` is the tool's name
    and ``content`` its JSON arguments; for ``OBSERVATION``, ``metadata`` names the tool."""

    role: Role
    content: str | dict
    saved_content: str | None = None
    metadata: str | None = None
    image: Any = None

    def __str__(self) -> str:
        return f"{self.role}{self.metadata or ''}\n{self.content}"

    def get_text(self) -> str:
        """Human-readable text of the turn."""
        text = self.saved_content or self.content
        if self.role is Role.TOOL:
            return f"Calling tool `{self.metadata}`:\n\n```python\n{text}\n```"
        if self.role is Role.OBSERVATION:
            return f"```python\n{text}\n```"
        return str(text)


def build_system_prompt(enabled_tools: list[str], functions: list[dict[str, Any]]) -> str:
    """The demo's system prompt: self-introduction, today's date and the functions.

    Built-in tools (python, browser, image generation) are the demo's own and are not
    served here; ``enabled_tools`` must be empty.
    """
    if enabled_tools:
        raise ValueError(f"built-in tools {enabled_tools} are not available; pass functions instead")
    value = SELF_INTRODUCTION + "\n\n" + datetime.now().strftime(DATE_PROMPT)
    if functions:
        value += "\n\n" + TOOLS_HEADING
    for function in functions:
        value += f"\n\n## {function['name']}\n\n{json.dumps(function, ensure_ascii=False, indent=4)}"
        value += "\n" + CALL_INSTRUCTION
    return value


def process_input(history: list[Conversation], tools: list[dict[str, Any]],
                  role_name_replace: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """A demo history as GLM-4 message dicts. With tools, the first message is
    ``{"role": "system", "content": "", "tools": [...]}``: the glm-4-9b-chat template's
    way to carry tools, which :func:`process_response` reads back."""
    chat_history: list[dict[str, Any]] = []
    if tools:
        chat_history.append({"role": "system", "content": "",
                             "tools": [{"type": "function", "function": function_of(t)} for t in tools]})
    for conversation in history:
        role = str(conversation.role).removeprefix("<|").removesuffix("|>")
        if role_name_replace:
            role = role_name_replace.get(role, role)
        content = conversation.content
        if isinstance(content, dict):
            content = json.dumps(content, ensure_ascii=False)
        item: dict[str, Any] = {"role": role, "content": content}
        if conversation.metadata:
            item["metadata"] = conversation.metadata
        chat_history.append(item)
    return chat_history


def to_openai(chat_history: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """GLM-4 message dicts (from :func:`process_input`) as OpenAI ``(messages, tools)``.

    An assistant turn with metadata is a tool call; an observation is a tool result.
    """
    messages: list[dict[str, Any]] = []
    tools: list[dict[str, Any]] = []
    last_call_id = None
    for index, item in enumerate(chat_history):
        if "tools" in item:
            tools.extend(item["tools"])
        role, content, metadata = item["role"], item.get("content") or "", (item.get("metadata") or "").strip()
        if role == "assistant" and metadata:
            last_call_id = f"call_{index}"
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": last_call_id, "type": "function", "function": {"name": metadata, "arguments": content}}]})
        elif role == "observation":
            messages.append({"role": "tool", "tool_call_id": last_call_id or f"call_{index}", "content": content})
        elif content:
            messages.append({"role": role, "content": content})
    return messages, tools


def process_response(output: str, history: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
                     ) -> tuple[str | dict[str, Any], list[dict[str, Any]]]:
    """The composite demo's ``process_response``: the reply (text, or a tool call as
    ``{"name", "parameters"}``) and the history with the assistant turn appended.

    ``tools`` names the callable functions; without it, the tools listed in the
    history's first message (``{"role": "system", "tools": [...]}``) are used.
    """
    history = [dict(m) for m in history]
    if tools is None and history and history[0].get("role") == "system":
        tools = history[0].get("tools")
    names = tool_names(tools)
    call = parse_tool_call(output, names) if names else None
    if call is not None:
        history.append({"role": "assistant", "metadata": call.name, "content": call.arguments})
        return {"name": call.name, "parameters": call.parameters}, history
    text = output.strip()
    history.append({"role": "assistant", "metadata": "", "content": text})
    return text, history
