"""Chat formats shared by the server (``deployments``) and the client library (``glm_client``).

    from chat_formats import get_chat_format

    fmt = get_chat_format("glm4")
    prompt = fmt.render(messages, tools, tokenizer)
    call = fmt.parse_reply(reply_text, tools)

``glm4`` is GLM-4's own format with OpenAI tools and tool calls (:mod:`chat_formats.glm4`);
``template`` is the tokenizer's chat template, without tools (:mod:`chat_formats.template`).
A format of your own is a plug-in, chosen by import path (:mod:`chat_formats.registry`).
"""

from chat_formats.base import ChatFormat, ToolCallParser
from chat_formats.glm4 import Glm4Format
from chat_formats.registry import chat_formats, get_chat_format, register_chat_format
from chat_formats.template import TemplateFormat

__all__ = ["ChatFormat", "Glm4Format", "TemplateFormat", "ToolCallParser", "chat_formats", "get_chat_format",
           "register_chat_format"]
