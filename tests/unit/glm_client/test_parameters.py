"""The demo's sampling keyword arguments as vLLM takes them (glm_client/src/glm_client/parameters.py)."""

from __future__ import annotations

import warnings

import pytest

from glm_client.parameters import vllm_parameters


def test_vllm_parameters_renames_and_drops_with_one_warning_at_the_caller():
    demo = {"max_new_tokens": 8, "temperature": 0.5, "do_sample": True, "best_of": 1, "use_beam_search": False,
            "length_penalty": 1.0, "early_stopping": False}
    with pytest.warns(UserWarning) as record:
        assert vllm_parameters(demo) == {"max_tokens": 8, "temperature": 0.5}
    assert len(record) == 1 and record[0].filename == __file__
    assert str(record[0].message).startswith(
        "ignoring ['best_of', 'do_sample', 'early_stopping', 'length_penalty', 'use_beam_search']")
    assert demo["max_new_tokens"] == 8  # the caller's dict is left alone
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert vllm_parameters({"max_new_tokens": 4, "top_p": 0.8}) == {"max_tokens": 4, "top_p": 0.8}
