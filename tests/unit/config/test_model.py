"""The model's config (deployments/config/model.py): CPU settings, engine arguments and the
stream's chunk size."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deployments.config import CpuConfig, ModelConfig, StreamingConfig
from tests.support.config import config_error


def test_engine_kwargs_may_not_shadow_typed_fields():
    assert "max_model_len" in config_error({"model": {"model": "m", "engine_kwargs": {"max_model_len": 5}}})


@pytest.mark.parametrize("bad", [[], ["0-"], ["a"], ["0;1"]])
def test_threads_bind_rejects_malformed_core_lists(bad):
    with pytest.raises(ValidationError, match="threads_bind"):
        CpuConfig(threads_bind=bad)


def test_threads_bind_accepts_core_lists():
    assert CpuConfig(threads_bind=["0-3", "4,6", "7"]).threads_bind == ["0-3", "4,6", "7"]


def test_engine_args_carry_typed_fields_and_passthrough():
    model = ModelConfig(model="/m/glm-4", enforce_eager=True, engine_kwargs={"block_size": 32})
    args = model.engine_args()
    assert args["model"] == "/m/glm-4"
    assert args["served_model_name"] == "glm-4"
    assert args["enforce_eager"] is True and args["block_size"] == 32
    assert "max_model_len" not in args, "unset fields keep vLLM's own defaults"


def _chunk_tokens(running: int, max_chunk_tokens: int, streams: int, min_chunk_tokens: int = 1) -> int:
    return StreamingConfig(min_chunk_tokens=min_chunk_tokens, max_chunk_tokens=max_chunk_tokens,
                           streams_per_chunk_token=streams).chunk_tokens(running)


def test_chunk_size_grows_with_load_and_stops_at_the_cap():
    assert [_chunk_tokens(n, 8, 4) for n in (0, 1, 4, 5, 8, 32, 64, 1000)] == [1, 1, 1, 2, 2, 8, 8, 8]
    assert _chunk_tokens(64, 1, 4) == 1, "max_chunk_tokens 1 streams every token"
    assert [_chunk_tokens(n, 8, 2) for n in (1, 2, 3, 8, 16)] == [1, 1, 2, 4, 8], "one token per 2 streams"


def test_chunk_size_never_falls_below_the_floor():
    assert [_chunk_tokens(n, 8, 1, min_chunk_tokens=2) for n in (0, 1, 2, 5, 64)] == [2, 2, 2, 5, 8]
    with pytest.raises(ValueError, match="max_chunk_tokens must be at least min_chunk_tokens"):
        StreamingConfig(min_chunk_tokens=4, max_chunk_tokens=2)
