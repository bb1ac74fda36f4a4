"""Chat formats by name or import path: the shipped ones and plug-ins register the same way.

``model.chat_format`` takes a registered name (``glm4``, ``template``) or the import path
(``my_pkg.formats:MyFormat`` or ``my_pkg.formats.MyFormat``) of a
:class:`~chat_formats.base.ChatFormat` subclass, which is imported and registered on first
use, as vLLM's tool-parser plug-ins are::

    from chat_formats import ChatFormat, register_chat_format

    @register_chat_format
    class Plain(ChatFormat):
        name = "plain"

        def render(self, messages, tools, tokenizer):
            return "\\n".join(m["content"] for m in messages) + "\\nassistant:"
"""

from __future__ import annotations

from functools import cache

from chat_formats.base import ChatFormat
from chat_formats.plugins import PluginRegistry

BUILTIN_FORMATS = {
    "glm4": "chat_formats.glm4:Glm4Format",
    "template": "chat_formats.template:TemplateFormat",
}
"""The shipped formats by name: import paths, loaded on first use (no import cycle)."""

_REGISTRY: PluginRegistry[type[ChatFormat]] = PluginRegistry("chat format", ChatFormat, BUILTIN_FORMATS)


def register_chat_format(cls: type[ChatFormat]) -> type[ChatFormat]:
    """Make ``cls`` choosable by its ``name`` (a class decorator)."""
    return _REGISTRY.register(cls)


def chat_formats() -> dict[str, ChatFormat]:
    """The registered formats by name, one instance each."""
    return {name: _instance(cls) for name, cls in _REGISTRY.classes().items()}


def get_chat_format(name_or_path: str) -> ChatFormat:
    """The chat format called ``name_or_path``, or the :class:`ChatFormat` subclass at that
    import path (then registered); ValueError naming the known formats otherwise. Formats
    are stateless: one instance serves every request."""
    return _instance(_REGISTRY.get(name_or_path))


@cache
def _instance(cls: type[ChatFormat]) -> ChatFormat:
    return cls()
