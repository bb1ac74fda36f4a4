"""config/serve-sim.yaml's simulated engines in the real app: 4 engine replicas behind the
same router, routing and stream channel as vLLM's, called with the openai SDK and httpx.

The app runs in a Ray cluster of its own (`serve run --address local`), started once for
this module. It is not an application of the e2e session's cluster: beside that cluster's
six vLLM engines on two cores, the autoscaling test's new engine took more than its 240 s to
start.
"""

from __future__ import annotations

import concurrent.futures
import re
from pathlib import Path

import httpx
import pytest
import yaml
from openai import OpenAI

from benchmarks.harness import servers
from tests.support.e2e_cluster import MODEL_DIR, MODEL_NAME, processes_named
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
SIM_REPLICAS = 4

LONG = " ".join(f"fact{i}" for i in range(300))  # several 128-token blocks of unique text


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory):
    """config/serve-sim.yaml with 4 simulated engine replicas, 1 router and statistics every second."""
    if not (MODEL_DIR / ".complete").is_file():
        pytest.fail(f"embedded model missing: run `make model` (expected {MODEL_DIR})")
    tmp = tmp_path_factory.mktemp("sim")
    config = yaml.safe_load((ROOT / "config" / "serve-sim.yaml").read_text())
    args = config["applications"][0]["args"]
    args["engine"].update(num_replicas=SIM_REPLICAS, routing={"policy": "prefix", "stats_period_s": 1})
    args["router"]["deployment"]["num_replicas"] = 1
    path = tmp / "serve-sim.yaml"
    path.write_text(yaml.safe_dump(config))
    with servers.glm_serve(path, tmp, timeout_s=300) as (base_url, _, _):
        def all_engines_up() -> bool:
            running = httpx.get(f"{base_url}/health", timeout=10).json().get("engine_replicas_running")
            assert running == SIM_REPLICAS, f"{running} of {SIM_REPLICAS} engine replicas running"
            return True

        wait_until(all_engines_up, 120, "every simulated engine replica running")
        yield base_url


@pytest.fixture()
def sim(sim_url):
    with httpx.Client(base_url=sim_url, timeout=60) as client:
        yield client


def _chat(sim, messages, max_tokens=16):
    response = sim.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": messages,
                                                      "max_tokens": max_tokens})
    assert response.status_code == 200, response.text
    return response.headers["x-glm-serve-replica"], response.json()


def test_every_simulated_replica_is_a_light_process_without_vllm(sim):
    assert sim.get("/health").json()["engine_replicas_running"] == SIM_REPLICAS
    engines = processes_named("ray::ServeReplica:glm:GLMEngine")
    assert len(engines) == SIM_REPLICAS
    for proc in engines:
        assert not [c for c in proc.children(recursive=True) if c.name().startswith("VLLM")]
        maps = open(f"/proc/{proc.pid}/maps").read()
        assert "libtorch" not in maps, "a simulated engine replica imported torch"
        assert proc.memory_info().rss < 400 * 2**20, f"{proc.memory_info().rss / 2**20:.0f} MB"


def test_a_stream_through_the_openai_sdk_has_max_tokens_of_filler_and_its_usage(sim_url):
    client = OpenAI(base_url=f"{sim_url}/v1", api_key="unused", max_retries=0)
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
    assert all(p.is_running() for p in processes_named("ray::ServeReplica:glm:GLMEngine"))
