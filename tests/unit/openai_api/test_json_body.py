"""A request body's JSON (deployments/openai_api/json_body.py): each hostile kind is refused by
name, and what is valid passes. The strategies are tests/support/hostile.py's."""

from __future__ import annotations

import pytest

from deployments.core.errors import APIError
from deployments.openai_api.json_body import MAX_DEPTH, parse_object
from tests.support.hostile import HUGE_INT, LONE, nested


@pytest.mark.parametrize("body, says", [
    (nested(MAX_DEPTH + 1, "["), "nests"), (nested(100_000, "{"), "nests"),
    (f'{{"model":"m","prompt":"x","max_tokens":{HUGE_INT}}}'.encode(), "not valid JSON"),
    (f'{{"model":"{LONE}","prompt":"x"}}'.encode(), "surrogate"),
    (b"\xff\xfe{}", "not valid JSON"), (b'{"a":"\xff"}', "not valid UTF-8"),
])
def test_each_kind_is_refused_by_name(body, says):
    with pytest.raises(APIError) as error:
        parse_object(body)
    assert error.value.status == 400 and says in error.value.message


def test_valid_escaped_pairs_and_depth_within_the_limit_pass():
    assert parse_object('{"content":"\\ud83d\\ude00"}'.encode()) == {"content": "😀"}
    assert parse_object(nested(MAX_DEPTH - 3, "["))["model"] == "m"
