"""glm-serve's gate in Serve's HTTP proxy: a generation request that the router replicas
would refuse is refused before Serve's proxy routes it, and a client that stops reading
is cut after ``router.deadlines.client_send_timeout_s``.

Past ``router.max_in_flight_requests`` a router replica refuses at once, but the refusal
still travels Serve's proxy -> routing loop -> router replica -> back, Python in the proxy
at each step, and under a burst those add up
(docs/measurements.md#the-routers-bounds-serves-proxy-refuses-first). This ASGI
middleware runs in the proxy ahead of all that. Per glm-serve application it counts the generation
requests in flight through this proxy and, once they reach what the application's running
router replicas admit (``router.max_in_flight_requests`` x replicas), answers 503 in
OpenAI's shape with ``Retry-After``, the router's own refusal.

A client that stops reading: Serve's proxy and the router replica each queue a reply
without bound and without waiting (docs/operations.md), so nothing pushes back on the
engine; only the proxy's write to the client waits, once the kernel's socket buffers are
full. The gate times that write out: when one write has waited
``router.deadlines.client_send_timeout_s``, it tells Serve's proxy the client disconnected, which
cancels the request in the router replica and so aborts the engine's work, and drops the
rest of the reply. Memory per such client is then bounded by time as well as by
``max_tokens``.

The admission check is a fast path, not the bound. The router replicas still enforce
their caps: on a cluster each node's proxy admits up to the whole cap, and the gate's
view of the applications is refreshed every :data:`REFRESH_S` from Serve's controller. Until it has a
view (the first seconds of a proxy, an application deployed without a config file, or a
controller it cannot reach) it passes every request through.

Installed through Ray's proxy hook: ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=
deployments.proxy_gate.middlewares`` in the environment of each Ray node when its proxy
starts. ``glm-serve run`` sets it; on a cluster, set it where ``ray start`` runs (the
KubeRay manifest does). Every request it passes carries :data:`GATE_HEADER`, so the router
replicas can tell when it is missing (:mod:`deployments.ingress.gate_watch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from deployments.config import AppConfig, is_builder
from deployments.core import serve_private
from deployments.core.errors import APIError, overloaded
from deployments.ingress.access_log import to_stderr
from deployments.openai_api.routes import ADMITTED_ROUTES, GATE_HEADER, ambiguity, route_path

logger = logging.getLogger("glm_serve.proxy_gate")

REFRESH_S = 5.0
"""How often each proxy asks Serve's controller for the applications' bounds. Between two
asks a router replica that started or stopped shifts the cap by its share; the routers'
own checks cover the difference."""
REFUSED_BY_HEADER = "x-glm-serve-refused-by"
_GATE_HEADER_BYTES = GATE_HEADER.encode()
_GATE_MARK = (_GATE_HEADER_BYTES, b"1")

_DISCONNECT = {"type": "http.disconnect"}
_WRITE_S = 0.01
"""A write that takes longer than this waited for the client (what a client's budget counts)."""
_deadline = getattr(asyncio, "timeout", None)  # Python 3.11+: a timer, not a task, per send
_REFUSAL = overloaded()
_REFUSAL_BODY = json.dumps(_REFUSAL.body()).encode()
_REFUSAL_START = {
    "type": "http.response.start",
    "status": _REFUSAL.status,
    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(_REFUSAL_BODY)).encode()),
                (REFUSED_BY_HEADER.encode(), b"proxy"),
                *((k.encode(), v.encode()) for k, v in _REFUSAL.headers().items())],
}


@dataclass(frozen=True)
class AppLimits:
    """What the gate enforces on one glm-serve application's generation requests."""

    app: str
    cap: int | None
    """Requests in flight at once through one proxy (None: no check here)."""
    router_replicas: int
    send_timeout_s: float | None


def app_limits(details: Mapping[str, Any]) -> dict[str, AppLimits]:
    """Admitted paths (``/v1/chat/completions``, ``/tokenize``... under each route prefix) to their
    application's limits, from Serve's instance details (``get_serve_instance_details``).

    Only glm-serve applications deployed from a config are covered. Their cap is
    ``router.max_in_flight_requests`` x their running router replicas (their ingress
    deployment); None without a cap or a running router replica."""
    found: dict[str, AppLimits] = {}
    for name, app in (details.get("applications") or {}).items():
        config = app.get("deployed_app_config") or {}
        prefix = app.get("route_prefix")
        ingress = (app.get("deployment_topology") or {}).get("ingress_deployment")
        if not is_builder(config.get("import_path")) or prefix is None or ingress is None:
            continue
        try:
            router = AppConfig.model_validate(config.get("args") or {}).router
        except ValidationError:
            continue  # Serve refused to deploy it; nothing of it is serving
        replicas = (app.get("deployments") or {}).get(ingress, {}).get("replicas") or []
        running = sum(1 for r in replicas if r.get("state") == "RUNNING")
        cap = router.max_in_flight_requests * running if router.max_in_flight_requests and running else None
        limits = AppLimits(name, cap, running, router.deadlines.client_send_timeout_s)
        if cap is None and limits.send_timeout_s is None:
            continue
        for route in ADMITTED_ROUTES:
            found[prefix.rstrip("/") + route] = limits
    return found


class _ClientWatch:
    """One request's ``send`` and ``receive``, for a client that may stop reading: once the
    writes to the client have waited ``timeout_s`` in all (not only in one write: a client
    that reads a little every minute is cut too), the client is stalled; from then on sends
    are dropped and ``receive`` says the client disconnected (Serve's proxy then cancels
    the request in the router replica)."""

    __slots__ = ("_receive", "_send", "_timeout_s", "_stalled", "_waited_s", "_loop")

    def __init__(self, receive: Receive, send: Send, timeout_s: float) -> None:
        self._receive, self._send, self._timeout_s = receive, send, timeout_s
        self._loop = asyncio.get_running_loop()
        # a future, not an Event: receive waits on it directly, with no task of its own
        self._stalled: asyncio.Future[None] = self._loop.create_future()
        self._waited_s = 0.0

    @property
    def stalled(self) -> bool:
        """Whether the writes to the client have waited past the timeout in all."""
        return self._stalled.done()

    async def send(self, message: dict) -> None:
        if self.stalled:
            return
        budget = self._timeout_s - self._waited_s
        start = self._loop.time()
        try:
            if _deadline is not None:
                async with _deadline(budget):
                    await self._send(message)
            else:  # Python 3.10
                await asyncio.wait_for(self._send(message), budget)
        except (TimeoutError, asyncio.TimeoutError):
            self._stalled.set_result(None)
            return
        # Only waiting counts: a write into room in the socket's buffers takes microseconds.
        self._waited_s += max(0.0, self._loop.time() - start - _WRITE_S)

    async def receive(self) -> dict:
        if self.stalled:
            return _DISCONNECT
        client = asyncio.ensure_future(self._receive())
        try:
            await asyncio.wait((client, self._stalled), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not client.done():
                client.cancel()
        return client.result() if client.done() and not client.cancelled() else _DISCONNECT


class ProxyGate:
    """ASGI middleware in Serve's proxy: refuses a generation request at once when its
    application already has ``AppLimits.cap`` requests in flight through this proxy, and
    cuts one whose client stops reading for ``AppLimits.send_timeout_s``.

    ``read_details`` returns Serve's instance details; by default Serve's controller's.
    """

    def __init__(self, app: ASGIApp, read_details: Callable[[], Awaitable[Mapping[str, Any]]] | None = None) -> None:
        self._app = app
        self._limits: dict[str, AppLimits] = {}
        self._in_flight: dict[str, int] = {}  # by application
        self.refused: dict[str, int] = {}  # by application, since the last log line
        self.stalled: dict[str, int] = {}  # by application, since the last log line
        self._counters: dict[str, Any] = {}
        if read_details is None:  # in Serve's proxy, a Ray worker
            read_details, self._counters = ServeControllerDetails(), _counters()
            to_stderr(logger, "%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._read_details = read_details
        self._refresher: asyncio.Task | None = None
        # Serve builds the middleware stack inside the proxy's event loop; start watching
        # the controller now, so that a first burst already finds the caps.
        with contextlib.suppress(RuntimeError):
            self._start()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._refresher is None:
            self._start()
        if scope["type"] == "http":
            why = ambiguity(scope)
            if why is not None:
                await self._refuse_ambiguous(send, why)
                return
            scope = dict(scope)
            scope["headers"] = [h for h in scope.get("headers", ()) if h[0] != _GATE_HEADER_BYTES] + [_GATE_MARK]
        limits = self._limits_for(scope)
        if limits is None:
            await self._app(scope, receive, send)
            return
        app = limits.app
        if limits.cap is not None and self._in_flight.get(app, 0) >= limits.cap:
            self._count(self.refused, "refused", app)
            await send(_REFUSAL_START)
            await send({"type": "http.response.body", "body": _REFUSAL_BODY})
            return
        self._in_flight[app] = self._in_flight.get(app, 0) + 1
        try:
            if limits.send_timeout_s is None:
                await self._app(scope, receive, send)
                return
            client = _ClientWatch(receive, send, limits.send_timeout_s)
            await self._app(scope, client.receive, client.send)
            if client.stalled:
                self._count(self.stalled, "stalled", app)
        finally:
            self._in_flight[app] -= 1

    @staticmethod
    async def _refuse_ambiguous(send: Send, why: str) -> None:
        body = json.dumps(APIError(400, f"Refused: {why}.").body()).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _limits_for(self, scope: Scope) -> AppLimits | None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not self._limits:
            return None
        return self._limits.get(route_path(scope))

    def _count(self, counts: dict[str, int], kind: str, app: str) -> None:
        counts[app] = counts.get(app, 0) + 1
        if kind in self._counters:
            self._counters[kind].inc(1, {"application": app})

    def _start(self) -> None:
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    def update(self, limits: dict[str, AppLimits]) -> None:
        """Replace the covered paths (what :func:`app_limits` found), logging each change."""
        before = {a.app: a for a in self._limits.values()}
        after = {a.app: a for a in limits.values()}
        for app in sorted(before.keys() | after.keys()):
            if before.get(app) != after.get(app):
                a = after.get(app)
                logger.info("application %r: %s", app, "not covered" if a is None else
                            f"admits {'any number' if a.cap is None else a.cap} at once "
                            f"({a.router_replicas} router replica(s) running), "
                            f"cuts a client that reads nothing for {a.send_timeout_s} s")
        self._limits = limits

    def _log_counts(self) -> None:
        for app, count in sorted(self.refused.items()):
            logger.warning("refused %d requests to application %r: its router replicas were full", count, app)
        for app, count in sorted(self.stalled.items()):
            logger.warning("cut %d requests to application %r: their clients read nothing for "
                           "router.deadlines.client_send_timeout_s", count, app)
        self.refused.clear()
        self.stalled.clear()

    async def _refresh_forever(self) -> None:
        failing = False
        while True:
            self._log_counts()
            try:
                self.update(app_limits(await self._read_details()))
                failing = False
            except Exception as exc:  # keep the last view; the routers still enforce their caps
                if not failing:
                    logger.warning("cannot read the applications from Serve's controller (%s: %s); "
                                   "keeping the last view", type(exc).__name__, exc)
                failing = True
            await asyncio.sleep(REFRESH_S)


class ServeControllerDetails:
    """Serve's instance details from its controller, the call behind ``serve status``."""

    def __init__(self) -> None:
        self._controller: Any = None

    async def __call__(self) -> Mapping[str, Any]:
        if self._controller is None:
            self._controller = await asyncio.to_thread(serve_private.serve_controller)
        try:
            return await self._controller.get_serve_instance_details.remote()
        except Exception:
            self._controller = None  # a restarted controller is a new actor: look it up again
            raise


def _counters() -> dict[str, Any]:
    from ray.util.metrics import Counter

    return {
        "refused": Counter("glm_serve_proxy_refused", description="Generation requests Serve's proxy refused for "
                           "glm-serve because the application's router replicas were full", tag_keys=("application",)),
        "stalled": Counter("glm_serve_proxy_client_stalls", description="Generation requests Serve's proxy cut "
                           "because their client read nothing for router.deadlines.client_send_timeout_s",
                           tag_keys=("application",)),
    }


def middlewares() -> list[Middleware]:
    """Ray's proxy callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``): the gate."""
    return [Middleware(ProxyGate)]
