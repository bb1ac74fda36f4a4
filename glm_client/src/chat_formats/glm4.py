"""Everything about GLM-4's chat format: the prompt, the tool system prompt, tool calls.

The reference is the ``chat_template`` of THUDM's glm-4-9b-chat tokenizer (a copy with
its source lives in ``tests/fixtures/``; the tests render both and compare bytes). In
that format:

* a prompt is ``[gMASK]<sop>``, then per message ``<|role|>{metadata}\\n{content}``
  (messages with empty content are left out), then ``<|assistant|>``;
* tools go into a system block: a fixed self-introduction, ``# 可用工具`` and, per
  function, ``## name``, its JSON (indent 4, non-ASCII kept) and a fixed sentence asking
  for JSON arguments;
* the model calls a tool by answering ``name\\n{json arguments}`` and stopping on
  ``<|observation|>``; the tool's result comes back as an ``observation`` message; an
  assistant turn that called a tool is ``<|assistant|>name\\n{arguments}``.

Generation must stop on ``<|endoftext|>``, ``<|user|>`` and ``<|observation|>`` (ids
151329, 151336, 151338): see :data:`STOP_TOKEN_IDS`. glm-serve takes them from the
model's generation config and the config file, never from here at run time; the
constant documents them for configs and tests.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from chat_formats.base import ChatFormat

PROMPT_PREFIX = "[gMASK]<sop>"
SELF_INTRODUCTION = (
    "你是一个名为 ChatGLM 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，"
    "你的任务是针对用户的问题和要求提供适当的答复和支持。"
)
TOOLS_HEADING = "# 可用工具"
CALL_INSTRUCTION = "在调用上述函数时，请使用 Json 格式表示调用的参数。"

SPECIAL_TOKEN_IDS = {
    "<|endoftext|>": 151329,
    "[gMASK]": 151331,
    "<sop>": 151333,
    "<|system|>": 151335,
    "<|user|>": 151336,
    "<|assistant|>": 151337,
    "<|observation|>": 151338,
}
STOP_TOKEN_IDS = (151329, 151336, 151338)

ROLES = ("system", "user", "assistant", "observation")


def function_of(tool: dict[str, Any]) -> dict[str, Any]:
    """The function object of an OpenAI tool (``{"type": "function", "function": {...}}``) or a bare one."""
    return tool["function"] if "function" in tool else tool


def tool_names(tools: list[dict[str, Any]] | None) -> set[str]:
    """The names of the functions in OpenAI-style (or bare) tools."""
    return {function_of(t)["name"] for t in tools or []}


def tools_system_block(tools: list[dict[str, Any]]) -> str:
    """The ``<|system|>`` block that lists the tools, exactly as GLM-4 was trained on it."""
    parts = [f"<|system|>\n{SELF_INTRODUCTION}\n\n{TOOLS_HEADING}"]
    for tool in tools:
        function = function_of(tool)
        body = json.dumps(function, ensure_ascii=False, indent=4)
        # The template has "\n\n## " after a block tag; tokenizers render chat templates
        # with jinja's trim_blocks, which eats the first of those newlines.
        parts.append(f"\n## {function['name']}\n\n{body}\n{CALL_INSTRUCTION}")
    return "".join(parts)


def _turns(message: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(role, metadata, content) turns of one OpenAI-style message."""
    role = message["role"]
    if role == "tool":
        role = "observation"
    elif role == "developer":
        role = "system"
    if role not in ROLES:
        raise ValueError(f"GLM-4 has no role {message['role']!r}")
    content = message.get("content") or ""
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content)
    turns = []
    if content:
        turns.append((role, message.get("metadata") or "", content))
    for call in message.get("tool_calls") or []:
        function = call["function"]
        arguments = function.get("arguments") or "{}"
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        turns.append(("assistant", function["name"], arguments))
    return turns


def render_prompt(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                  add_generation_prompt: bool = True) -> str:
    """The GLM-4 prompt text for OpenAI-style messages (``tool`` role = observation,
    assistant ``tool_calls`` = tool-call turns) and OpenAI-style tools."""
    parts = [PROMPT_PREFIX]
    if tools:
        parts.append(tools_system_block(tools))
    for message in messages:
        for role, metadata, content in _turns(message):
            parts.append(f"<|{role}|>{metadata}\n{content}")
    if add_generation_prompt:
        parts.append("<|assistant|>")
    return "".join(parts)


@dataclass
class ToolCall:
    """A tool call the model made, in OpenAI's terms."""

    name: str
    arguments: str
    """JSON text of the arguments, as the model wrote it."""
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    @property
    def parameters(self) -> dict[str, Any]:
        return json.loads(self.arguments)

    def openai(self, index: int | None = None) -> dict[str, Any]:
        """This call as an OpenAI ``tool_calls`` entry (with ``index`` in streamed deltas)."""
        entry: dict[str, Any] = {"id": self.id, "type": "function",
                                 "function": {"name": self.name, "arguments": self.arguments}}
        if index is not None:
            entry["index"] = index
        return entry


def parse_tool_call(text: str, tool_names: set[str] | list[str]) -> ToolCall | None:
    """The tool call in a whole reply, or None when the reply is plain text.

    A call is ``name\\n{json object}`` where ``name`` is one of ``tool_names``. A reply
    that names a tool but whose arguments are not a JSON object is text, never an error.
    """
    head, sep, rest = text.partition("\n")
    name = head.strip()
    if not sep or name not in tool_names:
        return None
    arguments = rest.strip()
    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError:
        return None
    if not isinstance(parsed, dict):
        return None
    return ToolCall(name=name, arguments=arguments)


class ToolCallStreamParser:
    """Streams a reply as text, holding text back only while it may still become a tool call.

    :meth:`feed` takes each text delta and returns the text that is now safe to send;
    :meth:`finish` returns either a :class:`ToolCall` or the last text held back. The text
    is held while the reply so far is a prefix of a known tool name, or is exactly a
    known tool name followed by a newline (then to the end, as a call's arguments are
    only known to be JSON when the call is complete).
    """

    def __init__(self, tool_names: set[str] | list[str]):
        self._names = set(tool_names)
        self._held = ""
        self._text_mode = not self._names

    def feed(self, delta: str) -> str:
        if self._text_mode:
            return delta
        self._held += delta
        head, sep, _ = self._held.partition("\n")
        name = head.strip()
        if sep:
            if name in self._names:
                return ""  # a call: hold the arguments until the end
        elif name in self._names or any(n.startswith(head.lstrip()) for n in self._names):
            return ""  # may still become a tool name (or is one, before its newline)
        self._text_mode = True
        out, self._held = self._held, ""
        return out

    def finish(self) -> ToolCall | str:
        """At the end of the reply: the call it made, or the text still held back."""
        held, self._held = self._held, ""
        if self._text_mode or not held:
            return held
        return parse_tool_call(held, self._names) or held


def tool_call_grammar(tools: list[dict[str, Any]], name: str | None = None) -> str:
    """An EBNF grammar for exactly one GLM-4 call: ``name\\n`` then a JSON object that
    matches the function's ``parameters`` schema (any object where it has none). With
    ``name`` None, any of ``tools`` may be called. Raises ValueError on a schema that
    cannot be turned into a grammar, naming the tool."""
    import xgrammar

    choices = []
    for tool in tools:
        function = function_of(tool)
        if name is not None and function["name"] != name:
            continue
        try:
            arguments = xgrammar.Grammar.from_json_schema(function.get("parameters") or {"type": "object"})
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ValueError(f"the parameters schema of tool {function['name']!r} is not usable: {exc}") from None
        head = xgrammar.Grammar.from_ebnf("root ::= " + json.dumps(function["name"] + "\n", ensure_ascii=False))
        choices.append(xgrammar.Grammar.concat(head, arguments))
    if not choices:
        raise ValueError(f"no tool named {name!r}")
    return str(xgrammar.Grammar.union(*choices) if len(choices) > 1 else choices[0])


class Glm4Format(ChatFormat):
    """GLM-4's own format, with OpenAI tools rendered as its tool system block."""

    name = "glm4"
    supports_tools = True

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, tokenizer: Any) -> str:
        return render_prompt(messages, tools)

    def parse_reply(self, text: str, tools: list[dict[str, Any]] | None) -> ToolCall | None:
        return parse_tool_call(text, tool_names(tools)) if tools else None

    def stream_parser(self, tools: list[dict[str, Any]] | None) -> ToolCallStreamParser | None:
        return ToolCallStreamParser(tool_names(tools)) if tools else None

    def tool_call_grammar(self, tools: list[dict[str, Any]], name: str | None = None) -> str:
        return tool_call_grammar(tools, name)
