"""An engine replica SIGKILLed under load: every request is accounted for, and Serve
brings the replica back.

The kill is by PID, as the kernel's OOM killer or a crashed node would do it, not
``ray.kill``: nothing in Ray or Serve is told beforehand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from tests.support.e2e_cluster import MODEL_NAME, STALL_TIMEOUT_S, TINY_GLM_NAME, gauge, processes_named
from tests.support.waiting import wait_until

CHAT = "/v1/chat/completions"


def _engine_replicas() -> list[psutil.Process]:
    """The main application's engine replica processes."""
    return processes_named("ray::ServeReplica:glm:GLMEngine")


async def _stream(client: httpx.AsyncClient, n: int = 0) -> tuple[int, list[str], float]:
    """(status, data lines (or the error body), when the stream ended). Each ``n`` is its
    own conversation, so that the prefix router spreads them like independent users."""
    messages = [{"role": "user", "content": f"Story {n}: tell me a long story about a lighthouse."}]
    body = {"model": MODEL_NAME, "messages": messages, "max_tokens": 400, "ignore_eos": True, "stream": True}
    async with client.stream("POST", CHAT, json=body) as response:
        if response.status_code != 200:
            return response.status_code, [(await response.aread()).decode()], time.monotonic()
        lines = [line async for line in response.aiter_lines() if line.startswith("data:")]
    return response.status_code, lines, time.monotonic()


async def _whole(client: httpx.AsyncClient, max_tokens: int, n: int = 0) -> httpx.Response:
    messages = [{"role": "user", "content": f"Question {n}: tell me a long story about a lighthouse."}]
    body = {"model": MODEL_NAME, "messages": messages, "max_tokens": max_tokens, "ignore_eos": True}
    return await client.post(CHAT, json=body)


def _running_engine_replicas(base_url: str) -> int:
    try:
        return httpx.get(f"{base_url}/health", timeout=10).json().get("engine_replicas_running", 0)
    except (httpx.HTTPError, ValueError):
        return 0


@pytest.mark.destructive
def test_an_engine_replica_killed_under_load(base_url):
    replicas = _engine_replicas()
    assert len(replicas) == 2, [p.pid for p in replicas]
    victim = replicas[0]
    victim_vllm = victim.children(recursive=True)
    assert victim_vllm, "the replica owns vLLM processes"

    async def run():
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=base_url, timeout=180, limits=limits) as client:
            streams = [asyncio.create_task(_stream(client, n)) for n in range(24)]
            wholes = [asyncio.create_task(_whole(client, 200, n)) for n in range(8)]
            await asyncio.sleep(4)  # every stream has begun on one of the two replicas
            killed_at = time.monotonic()
            os.kill(victim.pid, signal.SIGKILL)
            after = [await _whole(client, 8, 100 + n) for n in range(16)]  # one after another, as apps retry
            return killed_at, await asyncio.gather(*streams), await asyncio.gather(*wholes), after

    killed_at, streams, wholes, after = asyncio.run(run())

    # Streams: those on the killed replica end soon with an error event (or, had one not
    # begun, a 503: glm-serve never hands a request that a dead replica accepted to another
    # one), the rest finish.
    broken = 0
    for status, lines, ended_at in streams:
        if status == 503:
            assert json.loads(lines[0])["error"]["type"] == "service_unavailable"
            broken += 1
            continue
        assert status == 200 and lines[-1] == "data: [DONE]", (status, lines[-3:])
        last = json.loads(lines[-2][5:])
        if "error" in last:
            broken += 1
            assert last["error"]["type"] == "service_unavailable"
            assert ended_at - killed_at < 10, f"a broken stream ended {ended_at - killed_at:.1f} s after the kill"
    assert broken, "some streams ran on the killed replica"
    # Whole requests: those on the killed replica get 503 (with Retry-After), the rest succeed.
    for response in wholes:
        assert response.status_code in (200, 503), response.text[:300]
        if response.status_code == 503:
            assert response.json()["error"]["type"] == "service_unavailable" and response.headers["retry-after"]
    # Requests sent after the kill all succeed.
    assert [r.status_code for r in after] == [200] * 16, [r.text[:200] for r in after if r.status_code != 200]

    _, alive = psutil.wait_procs(victim_vllm, timeout=30)
    assert not alive, f"vLLM processes of the killed replica remain: {[p.pid for p in alive]}"

    back = _wait_for_two_engine_replicas(base_url, killed_at)
    print(f"\nFIGURE chaos: {broken} of 24 streams broke, {sum(r.status_code == 200 for r in wholes)} of 8 whole "
          f"requests succeeded, 16 of 16 after; 2 replicas again {back:.0f} s after")
    replicas_now = _engine_replicas()
    assert victim.pid not in [p.pid for p in replicas_now] and len(replicas_now) == 2


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_for_two_engine_replicas(base_url: str, since: float) -> float:
    wait_until(lambda: _running_engine_replicas(base_url) >= 2 and len(_engine_replicas()) >= 2,
               since + 180 - time.monotonic(), "Serve brought the engine replica back")
    return time.monotonic() - since


@pytest.mark.destructive
def test_a_stalled_engine_is_replaced_and_a_busy_one_is_not(base_url):
    victim, busy = _engine_replicas()
    frozen = [p for p in victim.children(recursive=True) if p.name().startswith("VLLM")]
    assert frozen, "the replica owns vLLM processes"

    async def run():
        async with httpx.AsyncClient(base_url=base_url, timeout=180) as client:
            streams = [asyncio.create_task(_stream(client, n)) for n in range(8)]
            await asyncio.sleep(1)
            for proc in frozen:  # the engine stops making progress; its replica still answers Ray
                proc.send_signal(signal.SIGSTOP)
            stalled_at = time.monotonic()
            while _alive(victim):
                assert time.monotonic() < stalled_at + STALL_TIMEOUT_S + 45, "the stalled replica was not replaced"
                await asyncio.sleep(1)
            return stalled_at, time.monotonic() - stalled_at, await asyncio.gather(*streams)

    try:
        stalled_at, replaced_after, streams = asyncio.run(run())
    finally:
        for proc in frozen:  # never leave a stopped process behind, whatever happened
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGCONT)
    assert replaced_after > STALL_TIMEOUT_S - 1, "replaced before the stall timeout"
    assert _alive(busy), "the busy engine replica was replaced too"
    # A stream on the stalled replica ends with an error event, or with a 503 if it had not
    # begun: it is not sent to the busy replica (a request may be what stalled its engine).
    assert all((s[0] == 200 and s[1][-1] == "data: [DONE]") or s[0] == 503 for s in streams), \
        [(s[0], s[1][-2:]) for s in streams]
    finished = [s for s in streams if s[0] == 200 and "error" not in s[1][-2]]
    broken = [s for s in streams if s[0] == 503 or "error" in s[1][-2]]
    assert finished, "streams on the busy replica finished"
    _, alive = psutil.wait_procs(frozen, timeout=30)
    assert not alive, f"vLLM processes of the replaced replica remain: {[p.pid for p in alive]}"
    back = _wait_for_two_engine_replicas(base_url, stalled_at)
    print(f"\nFIGURE stall: replaced {replaced_after:.0f} s after its engine stopped (stall_timeout_s "
          f"{STALL_TIMEOUT_S}); {len(broken)} of 8 streams broke, {len(finished)} finished; 2 replicas in {back:.0f} s")


def _router_replicas(app: str) -> list[psutil.Process]:
    return processes_named(f"ray::ServeReplica:{app}:GLMRouter")


@pytest.mark.destructive
def test_a_router_replica_killed_under_load_leaves_the_service_serving(glm_http):
    routers = _router_replicas("tiny-glm")
    assert len(routers) == 2, [p.pid for p in routers]
    body = {"model": TINY_GLM_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 300,
            "ignore_eos": True}
    with ThreadPoolExecutor(8) as pool:
        load = [pool.submit(glm_http.post, CHAT, json=body) for _ in range(8)]
        # the kill lands on requests in flight: both router replicas take some of the 8
        wait_until(lambda: gauge(glm_http, "glm_serve_requests_in_flight") >= 1, 30, "requests in flight in a router replica", period_s=0.1)
        routers[0].send_signal(signal.SIGKILL)
        after = [glm_http.post(CHAT, json={**body, "max_tokens": 4}) for _ in range(16)]
        outcomes = []
        for future in load:
            try:
                outcomes.append(future.result(60).status_code)
            except httpx.HTTPError as exc:  # a request that was inside the killed router
                outcomes.append(type(exc).__name__)
    assert [r.status_code for r in after] == [200] * 16, [r.text[:200] for r in after if r.status_code != 200]
    print(f"\nFIGURE router kill: 16 of 16 requests after the kill served; the 8 in flight: {outcomes}")
