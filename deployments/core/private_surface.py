"""Checking a framework's private names, for the seams that use them
(:mod:`deployments.core.serve_private`, :mod:`deployments.engine.vllm_private`)."""

from __future__ import annotations

import importlib
from typing import Any

PrivateName = tuple[str, str, str]
"""(module, attribute, why glm-serve uses it); the attribute may be dotted (``Class.method``)."""


def resolve(module: str, attribute: str) -> Any:
    """The object at ``module:attribute``; ImportError or AttributeError naming what is gone."""
    value: Any = importlib.import_module(module)
    for part in attribute.split("."):
        if isinstance(value, type) and part in getattr(value, "__dataclass_fields__", {}):
            continue  # a dataclass field: present on instances only
        value = getattr(value, part)
    return value


def missing_names(names: tuple[PrivateName, ...]) -> list[str]:
    """The names that this installed framework no longer has, each as ``module:attribute (why)``."""
    missing = []
    for module, attribute, why in names:
        try:
            resolve(module, attribute)
        except (ImportError, AttributeError):
            missing.append(f"{module}:{attribute} ({why})")
    return missing
