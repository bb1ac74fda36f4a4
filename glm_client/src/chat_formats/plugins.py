"""Plug-ins by name or import path: one registry type for chat formats here and for the
server's routing policies (``deployments.routing.policy``).

A plug-in is a subclass of the registry's base with a class attribute ``name``. It is
found by that name once registered, or by its import path (``module:Class`` or
``module.Class``), which imports and registers it, as vLLM's tool-parser plug-ins and
Ray's ``request_router_class`` are found. The shipped ones register the same way.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Generic, TypeVar

T = TypeVar("T", bound=type)


class PluginRegistry(Generic[T]):
    """Subclasses of ``base`` by name. ``builtins`` names the shipped ones by import path
    (``module:Class``); each is imported on its first look-up, so the registry never
    imports the modules that define its plug-ins (no import cycle, and no start-up cost
    for a plug-in nobody uses)."""

    def __init__(self, kind: str, base: type, builtins: Mapping[str, str]) -> None:
        self.kind, self._base, self._builtins = kind, base, dict(builtins)
        self._classes: dict[str, T] = {}

    def register(self, cls: T) -> T:
        """Make ``cls`` choosable by its ``name`` (usable as a class decorator)."""
        if not (isinstance(cls, type) and issubclass(cls, self._base)):
            raise TypeError(f"{cls!r} is not a {self._base.__name__} subclass")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{cls.__qualname__} needs a class attribute `name`")
        known = self._classes.get(name)
        if known is not None and known is not cls and _path(known) != _path(cls):
            raise ValueError(f"{self.kind} {name!r} is already {_path(known)}")
        self._classes[name] = cls
        return cls

    def classes(self) -> dict[str, T]:
        """The registered plug-ins by name, the shipped ones included (imported here)."""
        for name in self._builtins:
            self.get(name)
        return dict(self._classes)

    def get(self, name_or_path: str) -> T:
        """The plug-in called ``name_or_path``, or the subclass at that import path (then
        registered); ValueError saying what was wrong and naming the known ones."""
        if name_or_path in self._classes:
            return self._classes[name_or_path]
        if name_or_path in self._builtins:
            return self.get(self._builtins[name_or_path])
        cls = import_object(self.kind, name_or_path, sorted(set(self._classes) | set(self._builtins)))
        if not (isinstance(cls, type) and issubclass(cls, self._base)):
            raise ValueError(f"{self.kind} {name_or_path!r} is not a {self._base.__name__} subclass")
        if not getattr(cls, "name", None):
            raise ValueError(f"{self.kind} {name_or_path!r} needs a class attribute `name`")
        return self.register(cls)


def import_object(kind: str, import_path: str, known: list[str]) -> object:
    """The object at ``import_path`` (``module:attr`` or ``module.attr``), imported;
    ValueError saying what was wrong, naming the ``known`` names of this ``kind``."""
    module_name, sep, attr = import_path.partition(":")
    if not sep:
        module_name, _, attr = import_path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"unknown {kind} {import_path!r}; known: {known}, or an import path 'module:Class'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise ValueError(f"{kind} {import_path!r}: cannot import {module_name!r} ({exc})") from None
    except AttributeError:
        raise ValueError(f"{kind} {import_path!r}: module {module_name!r} has no {attr!r}") from None


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
