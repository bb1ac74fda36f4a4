"""config/serve-sim.yaml's simulated engines in the real app: 4 engine replicas behind the
same router, routing and stream channel as vLLM's, called with the openai SDK and httpx."""

from __future__ import annotations

import concurrent.futures
import re

import httpx
import pytest
from openai import OpenAI

from tests.e2e.conftest import MODEL_NAME, SIM_PREFIX, SIM_REPLICAS, processes_named
from tests.waiting import wait_until

LONG = " ".join(f"fact{i}" for i in range(300))  # several 128-token blocks of unique text


@pytest.fixture()
def sim(base_url):
    with httpx.Client(base_url=f"{base_url}{SIM_PREFIX}", timeout=60) as client:
        yield client


def _chat(sim, messages, max_tokens=16):
    response = sim.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": messages,
                                                      "max_tokens": max_tokens})
    assert response.status_code == 200, response.text
    return response.headers["x-glm-serve-replica"], response.json()


def test_every_simulated_replica_is_a_light_process_without_vllm(sim):
    assert sim.get("/health").json()["engine_replicas_running"] == SIM_REPLICAS
    engines = processes_named("ray::ServeReplica:sim:GLMEngine")
    assert len(engines) == SIM_REPLICAS
    for proc in engines:
        assert not [c for c in proc.children(recursive=True) if c.name().startswith("VLLM")]
        maps = open(f"/proc/{proc.pid}/maps").read()
        assert "libtorch" not in maps, "a simulated engine replica imported torch"
        assert proc.memory_info().rss < 400 * 2**20, f"{proc.memory_info().rss / 2**20:.0f} MB"


def test_a_stream_through_the_openai_sdk_has_max_tokens_of_filler_and_its_usage(base_url):
    client = OpenAI(base_url=f"{base_url}{SIM_PREFIX}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "hello"}],
                                            max_tokens=12, stream=True, stream_options={"include_usage": True})
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert text == " the" * 12 and finish == "length"
    assert usage.completion_tokens == 12 and usage.prompt_tokens > 0


def test_a_conversations_next_turn_stays_on_its_replica_and_hits_the_simulated_cache(sim):
    messages = [{"role": "user", "content": LONG}]
    first_replica, first = _chat(sim, messages, max_tokens=32)
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    messages += [{"role": "assistant", "content": first["choices"][0]["message"]["content"]},
                 {"role": "user", "content": "and then?"}]
    replica, second = _chat(sim, messages)
    assert replica == first_replica
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    # whole 128-token blocks of the first turn's prompt and reply
    assert cached > 0 and cached % 128 == 0 and cached >= 128 * (first["usage"]["prompt_tokens"] // 128)


def test_concurrent_conversations_spread_over_the_replicas_and_metrics_show_their_engines(sim):
    def one(i):
        return _chat(sim, [{"role": "user", "content": f"conversation {i}: {LONG[:400]}"}], max_tokens=24)[0]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        replicas = list(pool.map(one, range(32)))
    assert len(set(replicas)) == SIM_REPLICAS, f"32 new conversations reached {len(set(replicas))} replicas"

    def every_engine_reported() -> bool:
        text = sim.get("/metrics").text
        queries = re.findall(r'^glm_serve_engine_prefix_cache_queries_total\{replica="[^"]+"\} (\S+)', text, re.M)
        assert len(queries) == SIM_REPLICAS and all(float(q) > 0 for q in queries), queries
        return True

    wait_until(every_engine_reported, 30, "every simulated engine's statistics on the router's /metrics")


def test_a_request_past_the_context_is_refused_and_the_engines_keep_serving(sim):
    response = sim.post("/v1/chat/completions", json={"model": MODEL_NAME, "max_tokens": 4096,
                                                      "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 400 and "context length" in response.json()["error"]["message"]
    assert _chat(sim, [{"role": "user", "content": "still there?"}])[1]["choices"][0]["finish_reason"] == "length"
    assert all(p.is_running() for p in processes_named("ray::ServeReplica:sim:GLMEngine"))
