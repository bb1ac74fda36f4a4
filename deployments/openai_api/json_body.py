"""A request body as a JSON object, or a 400 that says why: never a 500.

Python's ``json`` accepts what later code cannot take: nesting deep enough to exhaust
the interpreter's recursion limit in whatever walks it next, integers past its
digit limit (an error of its own type), and lone UTF-16 surrogates (``"\\ud800"``),
which become strings that cannot be encoded as UTF-8 again when they are logged or
echoed in an error. Each is refused here, by name, before any model sees the data.
"""

from __future__ import annotations

import json
import re
from typing import Any

from deployments.core.errors import APIError

MAX_DEPTH = 64
"""Deepest nesting of objects and arrays a body may have (a JSON schema needs far less)."""

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def parse_object(body: bytes) -> dict[str, Any]:
    """``body`` as a JSON object; :class:`APIError` 400 for anything else."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise _too_deep() from None
    except UnicodeDecodeError as exc:
        raise APIError(400, f"Request body is not valid UTF-8: {exc.reason} at byte {exc.start}.") from None
    except ValueError as exc:  # JSONDecodeError, or an integer past Python's digit limit
        raise APIError(400, f"Request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise APIError(400, "Request body must be a JSON object.")
    _check_depth(data)
    if _SURROGATE_ESCAPE.search(body):  # rare: most clients send UTF-8, not escapes
        _check_strings(data)
    return data


def _too_deep() -> APIError:
    return APIError(400, f"Request body nests objects and arrays more than {MAX_DEPTH} deep.")


def _check_depth(data: Any) -> None:
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _too_deep()
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values() if isinstance(v, (dict, list)))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value if isinstance(v, (dict, list)))


def _check_strings(data: Any) -> None:
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                _encodable(key)
                stack.append(item)
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str):
            _encodable(value)


def _encodable(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, "Request body holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), "
                            "which is not text.") from None
