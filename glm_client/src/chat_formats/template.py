"""The tokenizer's own chat template (whatever the checkpoint ships), without tools."""

from __future__ import annotations

from typing import Any

from chat_formats.base import ChatFormat


class TemplateFormat(ChatFormat):
    """Renders with ``tokenizer.apply_chat_template``, as vLLM's own server does."""

    name = "template"
    supports_tools = False

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, tokenizer: Any) -> str:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
