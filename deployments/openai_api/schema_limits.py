"""Caps on the JSON schemas a request hands to grammar compilation.

A ``response_format`` schema, or a forced tool call's parameter schemas, become a grammar
that the engine compiles (xgrammar, against the whole vocabulary) before the request can
run, and a schema can be made to cost that compile minutes and gigabytes: deep nesting,
thousands of alternatives, huge enums, and above all patterns, whose cost grows faster
than their length (docs/measurements.md, "Schema caps"). The compile cannot be cancelled once started, so the router refuses
such schemas before they reach an engine: each cap is a 400 naming the parameter.
"""

from __future__ import annotations

import json
from typing import Any

from deployments.config import SchemaLimits
from deployments.core.errors import APIError

_ALTERNATIVES = ("anyOf", "oneOf", "allOf")


def check_schema(schema: Any, limits: SchemaLimits, param: str) -> None:
    """Raise a 400 naming ``param`` for the first cap ``schema`` goes over."""
    size = len(json.dumps(schema, ensure_ascii=False, separators=(",", ":")).encode())
    if size > limits.max_bytes:
        _refuse(param, f"{size} bytes, more than the {limits.max_bytes} allowed")
    alternatives = pattern_chars = 0
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limits.max_depth:
            _refuse(param, f"nests deeper than {limits.max_depth}")
        if isinstance(node, list):
            stack.extend((item, depth + 1) for item in node if isinstance(item, (dict, list)))
            continue
        if not isinstance(node, dict):
            continue
        for key in _ALTERNATIVES:
            if isinstance(node.get(key), list):
                alternatives += len(node[key])
        if alternatives > limits.max_alternatives:
            _refuse(param, f"more than {limits.max_alternatives} alternatives (anyOf, oneOf, allOf) in all")
        enum = node.get("enum")
        if isinstance(enum, list) and len(enum) > limits.max_enum_values:
            _refuse(param, f"an enum of {len(enum)} values, more than the {limits.max_enum_values} allowed")
        patterns = [node.get("pattern"), *(node.get("patternProperties") or {})]
        for pattern in patterns:
            if not isinstance(pattern, str):
                continue
            if len(pattern) > limits.max_pattern_chars:
                _refuse(param, f"a pattern of {len(pattern)} characters, more than the {limits.max_pattern_chars} "
                               "allowed")
            pattern_chars += len(pattern)
            if pattern_chars > limits.max_total_pattern_chars:
                _refuse(param, f"patterns of more than {limits.max_total_pattern_chars} characters in all")
        stack.extend((value, depth + 1) for value in node.values() if isinstance(value, (dict, list)))


def _refuse(param: str, why: str) -> None:
    raise APIError(400, f"{param}: the schema is too costly to compile: {why}.", param=param,
                   code="schema_too_complex")
