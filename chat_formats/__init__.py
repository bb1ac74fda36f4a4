"""Chat formats shared by the server (``deployments``) and the client library (``glm_client``).

    from chat_formats import get_chat_format

    fmt = get_chat_format("glm4")
    prompt = fmt.render(messages, tools, tokenizer)
    call = fmt.parse_reply(reply_text, tools)

``glm4`` is GLM-4's own format with OpenAI tools and tool calls (:mod:`chat_formats.glm4`);
``template`` is the tokenizer's chat template, without tools (:mod:`chat_formats.template`).
"""

from chat_formats.base import ChatFormat, ToolCallParser
from chat_formats.glm4 import Glm4Format
from chat_formats.template import TemplateFormat

CHAT_FORMATS: dict[str, ChatFormat] = {f.name: f for f in (Glm4Format(), TemplateFormat())}


def get_chat_format(name: str) -> ChatFormat:
    """The chat format called ``name``; raises ValueError naming the known ones."""
    try:
        return CHAT_FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown chat format {name!r}; known: {sorted(CHAT_FORMATS)}") from None


__all__ = ["CHAT_FORMATS", "ChatFormat", "Glm4Format", "TemplateFormat", "ToolCallParser", "get_chat_format"]
