"""The admission gate in Serve's proxy: which paths it gates, and how it counts and refuses.

The gate is plain ASGI, so these tests drive it with an ASGI app of their own; the e2e
suite runs it inside Serve's real proxy (tests/e2e/test_safety.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from deployments import proxy_gate
from deployments.proxy_gate import GATE_HEADER, REFUSED_BY_HEADER, AppLimits, ProxyGate, app_limits

GLM_ARGS = {"model": {"model": "/models/glm-4-9b-chat"}, "router": {"max_in_flight_requests": 96}}


def _app(name: str, prefix: str | None, args: dict, running: int = 1, starting: int = 0,
         import_path: str = "deployments.app:build_app") -> dict[str, Any]:
    """One application as Serve's ``get_serve_instance_details`` describes it (the keys read)."""
    replicas = [{"state": "RUNNING"}] * running + [{"state": "STARTING"}] * starting
    return {name: {"route_prefix": prefix,
                   "deployed_app_config": {"import_path": import_path, "args": args},
                   "deployment_topology": {"ingress_deployment": "GLMRouter"},
                   "deployments": {"GLMRouter": {"replicas": replicas}, "GLMEngine": {"replicas": [{"state": "RUNNING"}]}}}}


def test_each_admitted_path_of_a_capped_app_admits_its_running_routers_share():
    details = {"applications": {**_app("glm", "/", GLM_ARGS, running=2, starting=1),
                                **_app("tiny", "/tiny-glm", {**GLM_ARGS, "router": {"max_in_flight_requests": 8}})}}
    glm, tiny = AppLimits("glm", 192, 2, 60.0), AppLimits("tiny", 8, 1, 60.0)
    assert app_limits(details) == {"/v1/chat/completions": glm, "/v1/completions": glm, "/tokenize": glm,
                                   "/tiny-glm/v1/chat/completions": tiny, "/tiny-glm/v1/completions": tiny,
                                   "/tiny-glm/tokenize": tiny}


def test_without_a_cap_or_a_running_router_only_the_send_timeout_applies_and_other_apps_are_not_covered():
    details = {"applications": {
        **_app("uncapped", "/a", {"model": {"model": "m"}, "router": {"client_send_timeout_s": 5}}),
        **_app("starting", "/b", GLM_ARGS, running=0, starting=2),
        **_app("nothing", "/e", {"model": {"model": "m"}, "router": {"client_send_timeout_s": None}}),
        **_app("other", "/c", GLM_ARGS, import_path="someone.else:app"),
        **_app("no-route", None, GLM_ARGS),
        **_app("invalid", "/d", {"model": {"modle": "m"}}),
    }}
    found = {path: limits for path, limits in app_limits(details).items() if path.endswith("/chat/completions")}
    assert found == {"/a/v1/chat/completions": AppLimits("uncapped", None, 1, 5.0),
                     "/b/v1/chat/completions": AppLimits("starting", None, 0, 60.0)}
    assert app_limits({}) == {} and app_limits({"applications": None}) == {}


class _Downstream:
    """An ASGI app whose requests stay in flight until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    async def __call__(self, scope, receive, send) -> None:
        self.entered += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def _never() -> dict:
    await asyncio.Event().wait()  # the controller never answers
    return {}


async def _call(gate: ProxyGate, path: str, method: str = "POST", root_path: str = "", raw_path: bytes | None = None,
                host: bytes | None = None) -> tuple[int, dict, bytes]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "root_path": root_path,
             "headers": [(b"host", host)] if host is not None else []}
    if raw_path is not None:
        scope["raw_path"] = raw_path
    await gate(scope, receive, send)
    headers = {k.decode(): v.decode() for k, v in sent[0].get("headers", [])}
    return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


def test_past_the_cap_a_request_is_refused_at_once_in_openai_shape_and_a_finished_one_frees_its_place():
    async def scenario():
        downstream = _Downstream()
        gate = ProxyGate(downstream, read_details=_never)
        gate.update(app_limits({"applications": _app("glm", "/", {**GLM_ARGS, "router": {"max_in_flight_requests": 2}})}))
        running = [asyncio.create_task(_call(gate, "/v1/chat/completions")),
                   asyncio.create_task(_call(gate, "/v1/completions"))]
        await asyncio.sleep(0)
        assert downstream.entered == 2
        status, headers, body = await asyncio.wait_for(_call(gate, "/v1/chat/completions"), 1)
        assert status == 503 and headers["retry-after"] == "1" and headers[REFUSED_BY_HEADER] == "proxy"
        assert json.loads(body)["error"]["code"] == "overloaded"
        assert int(headers["content-length"]) == len(body)
        assert downstream.entered == 2 and gate.refused == {"glm": 1}
        # not gated: other methods and paths, on a full application
        downstream.release.set()
        assert (await _call(gate, "/v1/models", method="GET"))[0] == 200
        assert (await _call(gate, "/health", method="GET"))[0] == 200
        assert [r[0] for r in await asyncio.gather(*running)] == [200, 200]
        assert (await _call(gate, "/v1/chat/completions"))[0] == 200, "finished requests gave their places back"

    asyncio.run(scenario())


def test_a_failing_request_frees_its_place_and_the_root_path_is_not_part_of_the_route():
    async def failing(scope, receive, send):
        raise RuntimeError("the proxy's handling failed")

    async def scenario():
        gate = ProxyGate(failing, read_details=_never)
        gate.update(app_limits({"applications": _app("glm", "/", {**GLM_ARGS, "router": {"max_in_flight_requests": 1}})}))
        for _ in range(3):  # each failure released its place, so none is refused
            try:
                await _call(gate, "/api/v1/chat/completions", root_path="/api")
            except RuntimeError:
                pass
        assert gate.refused == {}

    asyncio.run(scenario())


def test_without_a_view_of_the_applications_everything_passes_until_a_refresh_brings_one(monkeypatch):
    monkeypatch.setattr(proxy_gate, "REFRESH_S", 0.01)
    details = {"applications": _app("glm", "/", {**GLM_ARGS, "router": {"max_in_flight_requests": 1}})}
    reads = 0

    async def read_details():
        nonlocal reads
        reads += 1
        if reads == 1:
            raise ConnectionError("controller restarting")
        return details

    async def scenario():
        downstream = _Downstream()
        gate = ProxyGate(downstream, read_details=read_details)
        first = [asyncio.create_task(_call(gate, "/v1/chat/completions")) for _ in range(3)]
        await asyncio.sleep(0)
        assert reads == 1 and downstream.entered == 3, "no view yet (the first read failed): the routers decide"
        downstream.release.set()
        await asyncio.gather(*first)
        while reads < 2:  # the gate asks again after REFRESH_S
            await asyncio.sleep(0.01)
        downstream.release.clear()
        held = asyncio.create_task(_call(gate, "/v1/chat/completions"))
        await asyncio.sleep(0)
        assert (await _call(gate, "/v1/chat/completions"))[0] == 503
        downstream.release.set()
        assert (await held)[0] == 200

    asyncio.run(scenario())


class _Stalled:
    """uvicorn's ``send`` to a client that reads nothing: the first body waits forever."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.calls = 0

    async def __call__(self, message) -> None:
        self.calls += 1
        if message["type"] == "http.response.body":
            await asyncio.Event().wait()
        self.sent.append(message)


def test_a_client_that_reads_nothing_is_cut_after_the_send_timeout_and_its_request_sees_a_disconnect():
    events: list[str] = []

    async def streaming_app(scope, receive, send):
        """What Serve's proxy does: it watches receive for a disconnect while it relays."""
        async def watch():
            while (await receive())["type"] != "http.disconnect":
                pass
            events.append("disconnect")

        watcher = asyncio.create_task(watch())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for n in range(100):
            await send({"type": "http.response.body", "body": b"data: %d\n\n" % n, "more_body": True})
            events.append(f"sent {n}")
        await asyncio.wait_for(watcher, 1)

    async def scenario():
        gate = ProxyGate(streaming_app, read_details=_never)
        args = {**GLM_ARGS, "router": {"client_send_timeout_s": 0.2}}
        gate.update(app_limits({"applications": _app("glm", "/", args)}))
        stalled = _Stalled()

        async def receive():
            await asyncio.Event().wait()  # the client neither sends nor hangs up

        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(
            gate({"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}, receive, stalled), 5)
        took = asyncio.get_running_loop().time() - started
        assert 0.2 <= took < 1, took
        assert stalled.calls == 2, "after the write that timed out, nothing more was written"
        assert "sent 99" in events, "the rest of the reply was dropped, not queued behind the client"
        assert "disconnect" in events, "the app was told the client left"
        assert gate.stalled == {"glm": 1}

        # a client that reads: nothing is cut, only waiting counts against the budget
        sent: list[dict] = []

        async def reading(message):
            await asyncio.sleep(0.001)
            sent.append(message)

        events.clear()
        app_done = asyncio.create_task(
            gate({"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}, receive, reading))
        while len(sent) < 101:
            await asyncio.sleep(0.01)
        assert "disconnect" not in events and gate.stalled == {"glm": 1}
        app_done.cancel()

    asyncio.run(scenario())


def test_every_request_the_gate_passes_carries_its_mark_and_a_clients_copy_is_dropped():
    seen: list[list[tuple[bytes, bytes]]] = []

    async def downstream(scope, receive, send):
        seen.append(scope["headers"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def scenario():
        gate = ProxyGate(downstream, read_details=_never)
        sent: list[dict] = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        forged = [(b"x-glm-serve-gate", b"forged"), (b"accept", b"*/*")]
        await gate({"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": forged},
                   receive, send)
        await gate({"type": "http", "method": "GET", "path": "/health", "headers": []}, receive, send)

    asyncio.run(scenario())
    assert seen[0] == [(b"accept", b"*/*"), (GATE_HEADER.encode(), b"1")]
    assert seen[1] == [(GATE_HEADER.encode(), b"1")]


def test_a_client_that_reads_a_little_now_and_then_is_cut_when_its_waits_add_up():
    async def streaming_app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for n in range(1000):
            await send({"type": "http.response.body", "body": b"data: %d\n\n" % n, "more_body": True})

    async def scenario():
        gate = ProxyGate(streaming_app, read_details=_never)
        gate.update(app_limits({"applications": _app("glm", "/", {**GLM_ARGS, "router": {"client_send_timeout_s": 0.3}})}))
        accepted: list[dict] = []

        async def trickling(message):  # takes each write, but only after 50 ms
            await asyncio.sleep(0.05)
            accepted.append(message)

        async def receive():
            await asyncio.Event().wait()

        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(
            gate({"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}, receive, trickling), 5)
        assert asyncio.get_running_loop().time() - started < 1
        assert 5 <= len(accepted) <= 12, len(accepted)  # about 0.3 s / (50 ms - 10 ms) writes, not 1,000
        assert gate.stalled == {"glm": 1}

    asyncio.run(scenario())


@pytest.mark.parametrize("raw_path, host, refused", [
    (b"/v1/chat/completions", b"127.0.0.1:8000", False),
    (b"/v1/chat/completions%3Fx=1", b"127.0.0.1:8000", True),
    (b"/v1/chat/completions%23frag", b"127.0.0.1:8000", True),
    (b"/v1/chat/completions", b"evil.example/v1/chat/completions", True),
    (b"/v1/chat/completions", b"user@host", True),
])
def test_a_target_that_could_be_read_two_ways_is_refused_by_the_gate(raw_path, host, refused):
    async def scenario():
        return await _call(gate_passing(), "/v1/chat/completions", raw_path=raw_path, host=host)

    def gate_passing():
        downstream = _Downstream()
        downstream.release.set()
        return ProxyGate(downstream, read_details=_never)

    status, _, body = asyncio.run(scenario())
    assert (status == 400) == refused, (status, body)
    if refused:
        assert json.loads(body)["error"]["type"] == "invalid_request_error"
