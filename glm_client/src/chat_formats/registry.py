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

import importlib

from chat_formats.base import ChatFormat

_FORMATS: dict[str, ChatFormat] = {}


def register_chat_format(cls: type[ChatFormat]) -> type[ChatFormat]:
    """Make ``cls`` choosable by its ``name`` (a class decorator). Formats are stateless:
    one instance serves every request."""
    if not (isinstance(cls, type) and issubclass(cls, ChatFormat)):
        raise TypeError(f"{cls!r} is not a ChatFormat subclass")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__} needs a class attribute `name`")
    known = _FORMATS.get(name)
    if known is not None and type(known).__qualname__ != cls.__qualname__:
        raise ValueError(f"chat format {name!r} is already {type(known).__module__}.{type(known).__qualname__}")
    _FORMATS[name] = cls()
    return cls


def chat_formats() -> dict[str, ChatFormat]:
    """The registered formats by name."""
    _load_builtins()
    return dict(_FORMATS)


def get_chat_format(name_or_path: str) -> ChatFormat:
    """The chat format called ``name_or_path``, or the :class:`ChatFormat` subclass at that
    import path (then registered); ValueError naming the known formats otherwise."""
    _load_builtins()
    if name_or_path in _FORMATS:
        return _FORMATS[name_or_path]
    known = sorted(_FORMATS)
    module_name, sep, attr = name_or_path.partition(":")
    if not sep:
        module_name, _, attr = name_or_path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"unknown chat format {name_or_path!r}; known: {known}, or an import path 'module:Class'")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise ValueError(f"chat format {name_or_path!r}: cannot import {module_name!r} ({exc})") from None
    except AttributeError:
        raise ValueError(f"chat format {name_or_path!r}: module {module_name!r} has no {attr!r}") from None
    if not (isinstance(cls, type) and issubclass(cls, ChatFormat)):
        raise ValueError(f"chat format {name_or_path!r} is not a ChatFormat subclass")
    register_chat_format(cls)
    _FORMATS[name_or_path] = _FORMATS[cls.name]
    return _FORMATS[name_or_path]


def _load_builtins() -> None:
    # The shipped formats register on import, the same way a plug-in does.
    import chat_formats.glm4  # noqa: F401
    import chat_formats.template  # noqa: F401
