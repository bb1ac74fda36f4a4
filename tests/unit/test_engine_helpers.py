"""The engine's pure helpers: per-replica CPU settings, generation-config defaults, failure
mapping, and which requests are rendered beside the event loop."""

from __future__ import annotations

import json
import os

import pytest
from ray.exceptions import ActorDiedError
from ray.serve.exceptions import BackPressureError

from deployments.config import CpuConfig, StreamingConfig
from deployments.core.errors import APIError, EngineUnavailable
from deployments.core.generation import GenerationRequest
from deployments.engine.engine_args import apply_cpu_settings, cpu_env, stop_and_sampling_defaults
from deployments.engine.inputs import INLINE_RENDER_MAX_SIZE, render_size
from deployments.ingress.engine_calls import engine_failure
from deployments.stream_channel import ChannelClosed


@pytest.fixture()
def clean_env(monkeypatch):
    for name in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE", "GOMP_SPINCOUNT"):
        # setenv first: monkeypatch records nothing when it deletes a variable that is not
        # set, and then would not remove what the test sets. A leaked "8-15" core list once
        # reached the e2e cluster (started from this process) and broke an engine's start.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_each_local_rank_gets_its_own_cores(clean_env):
    cpu = CpuConfig(threads_bind=["0-7", "8-15"], kvcache_space_gib=4)
    assert apply_cpu_settings(cpu, 1) == {"VLLM_CPU_OMP_THREADS_BIND": "8-15", "VLLM_CPU_KVCACHE_SPACE": "4"}
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "8-15"


def test_omp_spin_count_reaches_libgomp_through_the_environment(clean_env):
    assert apply_cpu_settings(CpuConfig(omp_spin_count=10000), 0) == {"GOMP_SPINCOUNT": "10000"}
    assert os.environ["GOMP_SPINCOUNT"] == "10000"
    assert cpu_env(CpuConfig(omp_spin_count=0), 0) == {"GOMP_SPINCOUNT": "0"}  # 0 is a value, not "unset"


def test_a_rank_without_cores_fails_clearly(clean_env):
    with pytest.raises(ValueError, match="local rank 2 has no model.cpu.threads_bind entry"):
        apply_cpu_settings(CpuConfig(threads_bind=["0", "1"]), 2)


def test_no_cpu_settings_touch_nothing(clean_env):
    assert apply_cpu_settings(CpuConfig(), 0) == {}
    assert "VLLM_CPU_OMP_THREADS_BIND" not in os.environ


def test_generation_config_gives_eos_ids_and_sampling_defaults(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [151329, 151336, 151338], "temperature": 0.8, "top_p": 0.8, "do_sample": True}
    ))
    eos, defaults = stop_and_sampling_defaults(str(tmp_path), trust_remote_code=False)
    assert eos == {151329, 151336, 151338}
    assert defaults == {"temperature": 0.8, "top_p": 0.8}


def test_missing_generation_config_gives_nothing(tmp_path):
    assert stop_and_sampling_defaults(str(tmp_path), trust_remote_code=False) == (set(), {})


def test_engine_failures_map_to_statuses():
    assert engine_failure(BackPressureError(num_queued_requests=3, max_queued_requests=2)).status == 503
    assert engine_failure(ActorDiedError()).status == 503
    lost = engine_failure(ChannelClosed("the engine replica's stream connection closed"))
    assert (lost.status, lost.type) == (503, "service_unavailable")
    assert engine_failure(RuntimeError("boom")).status == 500
    assert engine_failure(RuntimeError("boom")).type == "server_error"


def _as_ray_raises_it(exc: Exception) -> Exception:
    """A replica's exception the way a caller of its handle sees it: pickled across the
    hop (Ray pickles the cause), then re-raised as a RayTaskError subclass of its class."""
    import pickle

    from ray.exceptions import RayTaskError

    cause = pickle.loads(pickle.dumps(exc))
    return RayTaskError("EngineDeployment.generate", "traceback", cause).as_instanceof_cause()


def test_engine_failures_are_told_apart_by_type_not_by_name():
    dead = engine_failure(_as_ray_raises_it(EngineUnavailable("vLLM core died")))
    assert (dead.status, dead.type) == (503, "service_unavailable")
    # A message that merely names a failure class is not that failure.
    assert engine_failure(RuntimeError("EngineDeadError ActorDiedError")).status == 500


def test_an_engine_refusal_crosses_ray_with_its_fields():
    refused = engine_failure(_as_ray_raises_it(APIError(400, "too long", param="messages",
                                                        code="context_length_exceeded")))
    assert (refused.status, refused.message, refused.param, refused.code) == (
        400, "too long", "messages", "context_length_exceeded")
    assert refused.body()["error"]["type"] == "invalid_request_error"


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


def _chat(*contents: str, **fields) -> GenerationRequest:
    return GenerationRequest("r", messages=[{"role": "user", "content": c} for c in contents], **fields)


def test_a_chat_sized_request_renders_inline():
    assert render_size(_chat("What is the capital of France?")) <= INLINE_RENDER_MAX_SIZE
    assert render_size(GenerationRequest("r", prompt="Once upon a time")) <= INLINE_RENDER_MAX_SIZE
    assert render_size(GenerationRequest("r", prompt=[1, 2, 3])) == 3


@pytest.mark.parametrize("request_", [
    _chat("x" * (INLINE_RENDER_MAX_SIZE + 1)),  # one long message
    _chat(*["hi"] * 1000),  # many short ones: the template renders each
    _chat("hi", tools=[{"type": "function", "function": {"name": "f", "description": "d" * 20000}}]),
    GenerationRequest("r", messages=[{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{" + "1" * 20000 + "}"}}]}]),
    GenerationRequest("r", prompt="x" * (INLINE_RENDER_MAX_SIZE + 1)),
    GenerationRequest("r", prompt=list(range(INLINE_RENDER_MAX_SIZE + 1))),  # each id is checked against the vocabulary
], ids=["long-message", "many-messages", "large-tools", "large-tool-call", "long-prompt", "many-token-ids"])
def test_a_large_request_renders_in_the_render_thread(request_):
    assert render_size(request_) > INLINE_RENDER_MAX_SIZE


def test_a_forced_tool_calls_grammar_builds_off_the_event_loop_within_its_timeout(monkeypatch):
    import asyncio
    import time

    from chat_formats import ChatFormat
    from deployments.engine import inputs as engine_input
    from deployments.engine.inputs import RequestInput

    class SlowGrammar(ChatFormat):
        name = "slow-grammar"
        supports_tools = True

        def tool_call_grammar(self, tools, name=None):
            time.sleep(0.5)  # a schema that takes long to compile
            return "root ::= \"x\""

    class Tokenizer:
        def encode(self, text, add_special_tokens=True):
            return [1]

    monkeypatch.setattr(engine_input, "GRAMMAR_TIMEOUT_S", 0.2)
    request_input = RequestInput(SlowGrammar(), Tokenizer())
    forced = GenerationRequest("r", messages=[{"role": "user", "content": "x"}], tools=[{"function": {"name": "f"}}],
                               force_tool_call=True)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        with pytest.raises(APIError) as error:
            await request_input.structured(forced)
        task.cancel()
        assert error.value.status == 400 and error.value.param == "tools"
        assert ticks >= 10, "the event loop kept running while the grammar was built"
        assert await request_input.structured(GenerationRequest("r", prompt="x", structured={"json_object": True})) \
            == {"json_object": True}

    asyncio.run(main())
    request_input.shutdown()
