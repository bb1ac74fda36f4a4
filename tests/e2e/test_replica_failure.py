"""Faults: a client that leaves mid-stream, and an engine replica that dies mid-stream."""

from __future__ import annotations

import contextlib
import json
import os
import time

import httpx
import psutil
import pytest

from tests.support.e2e_cluster import MODEL_NAME, gauge, vllm_processes

LONG = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Count to a thousand."}],
        "max_tokens": 400, "ignore_eos": True, "stream": True}


def _in_flight(http) -> float:
    return gauge(http, "glm_serve_requests_in_flight")


def _vllm_cpu_share(window_s: float) -> float:
    """CPU used by all engine replicas' vLLM processes over ``window_s``, in cores."""
    def used(procs: list[psutil.Process]) -> float:
        total = 0.0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    procs = vllm_processes()
    assert procs, "no vLLM processes found under the engine replicas"
    start = used(procs)
    time.sleep(window_s)
    return (used(procs) - start) / window_s


def test_client_disconnect_stops_the_request(http):
    with http.stream("POST", "/v1/chat/completions", json=LONG) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
        generating = _vllm_cpu_share(2.0)
    # The router notices the closed socket and cancels the engine's generation.
    deadline = time.monotonic() + 30
    while _in_flight(http) != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _in_flight(http) == 0
    # ...and vLLM stops computing it: the 400-token request would keep an engine busy for
    # seconds more (~100 % of a core); an idle engine's processes use a few percent.
    time.sleep(1.0)
    idle = _vllm_cpu_share(2.0)
    assert generating > 0.6, f"the engine should be busy while it streams ({generating:.2f} cores)"
    assert idle < 0.3, f"the engine still computes after the client left ({idle:.2f} cores)"


@pytest.mark.destructive
def test_engine_replica_death_mid_stream_ends_with_error_event_and_service_recovers(server, http):
    import ray

    ray.init(address=server["ray_address"], namespace="serve", log_to_driver=False)
    try:
        with http.stream("POST", "/v1/chat/completions", json=LONG) as response:
            assert response.status_code == 200
            replica = response.headers["x-glm-serve-replica"]
            events = []
            for line in response.iter_lines():
                if not line:
                    continue
                events.append(line)
                if len(events) == 3:
                    actor = next(
                        a for a in ray.util.list_named_actors(all_namespaces=True)
                        if a["name"].startswith("SERVE_REPLICA::") and a["name"].endswith(replica)
                    )
                    handle = ray.get_actor(actor["name"], namespace=actor["namespace"])
                    replica_pid = ray.get(handle.__ray_call__.remote(lambda _: os.getpid()))
                    engine_procs = psutil.Process(replica_pid).children(recursive=True)
                    assert engine_procs, "the engine replica should run vLLM in child processes"
                    ray.kill(handle, no_restart=True)
        assert events[-1] == "data: [DONE]"
        error = json.loads(events[-2].removeprefix("data: "))
        assert error["error"]["type"] == "service_unavailable", error
        assert len(events) < 400, "the stream should have ended early"
    finally:
        ray.shutdown()

    # vLLM's engine core and worker die with their replica instead of lingering as
    # orphans that hold memory, CPU (and on a GPU machine, the GPU). Ray reaps a killed
    # actor's children itself; conftest checks the harder case of `ray stop --force`.
    _, alive = psutil.wait_procs(engine_procs, timeout=30)
    assert not alive, f"vLLM processes outlived their replica: {[(p.pid, p.name()) for p in alive]}"

    # The other replica keeps serving while Serve replaces the dead one.
    deadline = time.monotonic() + 60
    while True:
        try:
            reply = http.post("/v1/chat/completions", json={**LONG, "stream": False, "max_tokens": 4})
            if reply.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "service did not recover after a replica died"
        time.sleep(1)


def _admitted(http) -> float:
    return gauge(http, "glm_serve_requests_admitted")


def test_clients_that_leave_before_the_first_token_release_their_admission(http, base_url):
    """A client that gives up while the router still waits for the first chunk cancels the
    router's request; its place under router.max_in_flight_requests must come back."""
    for _ in range(8):
        try:
            httpx.post(base_url + "/v1/chat/completions", json=LONG, timeout=httpx.Timeout(10, read=0.05))
        except httpx.TimeoutException:
            pass
    deadline = time.monotonic() + 30
    while _admitted(http) != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _admitted(http) == 0
    assert http.post("/v1/chat/completions", json={**LONG, "stream": False, "max_tokens": 4}).status_code == 200
