"""Caps on schemas that become grammars (deployments/openai_api/schema_limits.py)."""

from __future__ import annotations

import pytest

from deployments.config import SchemaLimits
from deployments.core.errors import APIError
from deployments.openai_api.schema_limits import check_schema

LIMITS = SchemaLimits()
REAL = {"type": "object", "properties": {"city": {"type": "string", "pattern": "^[A-Z][a-z]+$"},
                                         "unit": {"enum": ["c", "f"]},
                                         "when": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
        "required": ["city"]}


def _nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize("schema, says", [
    ({"type": "object", "description": "x" * 20_000}, "bytes"),
    (_nested(20), "nests deeper"),
    ({"anyOf": [{"type": "string", "const": str(i)} for i in range(40)],
      "properties": {"b": {"oneOf": [{"const": i} for i in range(30)]}}}, "alternatives"),
    ({"enum": list(range(300))}, "an enum of 300"),
    ({"type": "string", "pattern": "(a|b)*" * 60}, "a pattern of 360"),
    ({"type": "object", "patternProperties": {"x" * 300: {"type": "string"}}}, "a pattern of 300"),
    ({"type": "object", "properties": {k: {"type": "string", "pattern": "[a-z]{1,8}(x|y)*" * 3} for k in "abc"}},
     "patterns of more than 128 characters in all"),
])
def test_each_cap_is_a_400_naming_the_parameter(schema, says):
    with pytest.raises(APIError) as error:
        check_schema(schema, LIMITS, "response_format.json_schema.schema")
    assert error.value.status == 400 and error.value.param == "response_format.json_schema.schema"
    assert error.value.code == "schema_too_complex" and says in error.value.message


def test_real_schemas_pass():
    check_schema(REAL, LIMITS, "p")
    check_schema(_nested(7), LIMITS, "p")  # 15 levels of objects and their properties
