"""What a chat format is: one object per format, asked by the engine, router and SSE layers.

A chat format turns OpenAI-style messages (and tools) into a prompt, says whether it has
tool calls at all, finds a tool call in a whole reply or in a stream of deltas, and,
where it has tool calls, writes the grammar that forces the reply into one. Code that
needs any of this asks the format object (``get_chat_format(name)``) instead of
switching on the format's name.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol


class ToolCallParser(Protocol):
    """A stream parser: :meth:`feed` returns the text now safe to send, :meth:`finish`
    the tool call the reply made or the text still held back."""

    def feed(self, delta: str) -> str: ...

    def finish(self) -> Any: ...


class ChatFormat:
    """Base of every chat format. Formats are stateless: one instance serves every request."""

    name: ClassVar[str]
    supports_tools: ClassVar[bool] = False

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, tokenizer: Any) -> str:
        """The prompt text for ``messages`` (OpenAI-style dicts, string content) and ``tools``,
        ending where the assistant's reply begins. Raises on messages the format cannot hold."""
        raise NotImplementedError

    def parse_reply(self, text: str, tools: list[dict[str, Any]] | None) -> Any:
        """The tool call in a whole reply (an object with ``openai(index)``), or None for text."""
        return None

    def stream_parser(self, tools: list[dict[str, Any]] | None) -> ToolCallParser | None:
        """A parser for one streamed reply, or None when nothing needs holding back."""
        return None

    def tool_call_grammar(self, tools: list[dict[str, Any]], name: str | None = None) -> str:
        """An EBNF grammar (xgrammar's dialect, which vLLM's structured outputs take) that
        matches exactly one call of ``name``, or of any of ``tools`` when ``name`` is None,
        with arguments that match the tool's parameter schema."""
        raise NotImplementedError(f"chat format {self.name!r} has no tool calls")
