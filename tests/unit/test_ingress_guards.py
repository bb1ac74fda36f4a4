"""The ingress's own guards without Ray: /health's single flight, and the deadline on a body."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest

from deployments.config import IngressConfig
from deployments.core.errors import APIError
from deployments.ingress import health as health_module
from deployments.ingress.context import IngressContext
from deployments.ingress.gate_watch import ProxyGateWatch
from deployments.ingress.health import Health
from deployments.ingress.metrics import IngressMetrics


def _context(**router) -> IngressContext:
    from chat_formats import get_chat_format
    from deployments.ingress.admission import Admission

    metrics = IngressMetrics()
    engine = SimpleNamespace(app_name="glm", deployment_name="GLMEngine")
    return IngressContext(engine=engine, receiver=None, model_name="m", chat_format=get_chat_format("template"),
                          config=IngressConfig(**router), metrics=metrics, admission=Admission(None, metrics))


def test_a_stampede_of_health_probes_costs_one_controller_call(monkeypatch):
    calls = []
    lock = threading.Lock()

    def status():
        with lock:
            calls.append(time.monotonic())
        time.sleep(0.2)  # a slow controller
        deployment = SimpleNamespace(replica_states={"RUNNING": 2}, status="HEALTHY")
        return SimpleNamespace(applications={"glm": SimpleNamespace(deployments={"GLMEngine": deployment})})

    monkeypatch.setattr(health_module.serve, "status", status)
    ctx = _context()
    health = Health(ctx, ProxyGateWatch(ctx.metrics))

    async def main():
        answers = await asyncio.gather(*(health(None, None) for _ in range(600)))
        assert {a.status_code for a in answers} == {200}
        assert len(calls) == 1, "one refresh in flight serves every probe"
        assert (await health(None, None)).status_code == 200 and len(calls) == 1, "cached"
        monkeypatch.setattr(health_module, "HEALTH_CACHE_S", 0.0)
        await asyncio.sleep(0.01)
        await health(None, None)
        assert len(calls) == 2, "refreshed once the cache is old"

    asyncio.run(main())


class _TrickledRequest:
    """A request whose body comes in one part and then never finishes."""

    headers: dict[str, str] = {}

    async def stream(self):
        yield b'{"model": '
        await asyncio.Event().wait()


def test_a_body_that_does_not_arrive_in_time_is_a_408():
    ctx = _context(body_timeout_s=0.2)

    async def main():
        start = time.monotonic()
        with pytest.raises(APIError) as error:
            await ctx.read_json(_TrickledRequest())
        assert error.value.status == 408 and error.value.code == "body_timeout"
        assert time.monotonic() - start < 1

    asyncio.run(main())
