"""``GET /health``: 200 while Serve has an engine replica running, else 503.

Answered from Serve's controller (``serve.status``), never by a call into an engine, so it
does not wait behind generation. Probes come from load balancers, unauthenticated and
possibly many at once: the answer is cached for :data:`HEALTH_CACHE_S`, and while one
refresh is in flight every other probe waits for it (single flight), so the controller
sees at most one call per router replica per interval.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from deployments.core.errors import APIError
from deployments.ingress.access_log import RequestRecord
from deployments.ingress.context import IngressContext
from deployments.ingress.gate_watch import ProxyGateWatch

HEALTH_CACHE_S = 1.0
"""How long one answer from Serve's controller is reused."""


class Health:
    """The engine deployment's state. A load balancer (no key) or a tenant learns up or
    down and nothing else; an operator's key also sees the engine replicas, whether requests
    come through the proxy gate, and whether the tenants file in force is the one on disk."""

    route = ("GET", "/health")

    def __init__(self, ctx: IngressContext, gate: ProxyGateWatch,
                 tenants_stale: Callable[[], str | None] = lambda: None) -> None:
        self.ctx = ctx
        self._gate = gate
        self._tenants_stale = tenants_stale
        self._cached: tuple[float, int, dict[str, Any]] | None = None
        self._refresh: asyncio.Task[tuple[int, dict[str, Any]]] | None = None

    async def __call__(self, request: Request, record: RequestRecord) -> Response:
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > HEALTH_CACHE_S:
            if self._refresh is None or self._refresh.done():
                self._refresh = asyncio.ensure_future(self._engine_health())
            # shield: one probe that gives up must not cancel the refresh the others wait for
            status, body = await asyncio.shield(self._refresh)
            self._cached = (time.monotonic(), status, body)
        _, status, body = self._cached
        if record.caller is None or not record.caller.is_operator:  # up or down, no counts, no names
            body = {key: body[key] for key in ("status", "error") if key in body}
        else:
            body = {**body, "proxy_gate": self._gate.state(), "tenants_file_stale": self._tenants_stale()}
        headers = APIError(status, "").headers() if status != 200 else None  # Retry-After on a 503
        return JSONResponse(body, status_code=status, headers=headers or None)

    async def _engine_health(self) -> tuple[int, dict[str, Any]]:
        ctx = self.ctx
        try:
            status = await asyncio.wait_for(asyncio.to_thread(serve.status), ctx.config.deadlines.health_timeout_s)
            deployment = status.applications[ctx.engine.app_name].deployments[ctx.engine.deployment_name]
        except asyncio.TimeoutError:
            return _unavailable(APIError(503, "Serve's controller did not answer in time.", "service_unavailable"))
        except Exception as exc:  # noqa: BLE001  (no status is no health)
            return _unavailable(APIError(503, f"Serve's status is unavailable: {type(exc).__name__}",
                                         "service_unavailable"))
        running = int(deployment.replica_states.get("RUNNING", 0))
        body = {"status": "ok" if running else "unavailable", "model": ctx.model_name,
                "engine_replicas_running": running,
                "engine_status": getattr(deployment.status, "value", str(deployment.status))}
        if not running:
            return _unavailable(APIError(503, "No engine replica is running.", "service_unavailable"), body)
        return 200, body


def _unavailable(error: APIError, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    return error.status, {**error.body(), **(body or {"status": "unavailable"})}
