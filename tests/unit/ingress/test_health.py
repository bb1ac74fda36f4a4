"""The ingress's /health without Ray (deployments/ingress/health.py): a single flight to the controller."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from types import SimpleNamespace

from deployments.ingress import health as health_module
from deployments.ingress.access_log import RequestRecord
from deployments.ingress.gate_watch import ProxyGateWatch
from deployments.ingress.health import Health
from deployments.tenants.api_keys import default_tenant
from deployments.tenants.tenants_file import Tenant, hash_key
from tests.support.ingress import ingress_context


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
    ctx = ingress_context()
    health = Health(ctx, ProxyGateWatch(ctx.metrics))

    async def main():
        answers = await asyncio.gather(*(health(None, RequestRecord("/health", "GET")) for _ in range(600)))
        assert {a.status_code for a in answers} == {200}
        assert len(calls) == 1, "one refresh in flight serves every probe"
        assert (await health(None, RequestRecord("/health", "GET"))).status_code == 200 and len(calls) == 1, "cached"
        monkeypatch.setattr(health_module, "HEALTH_CACHE_S", 0.0)
        await asyncio.sleep(0.01)
        await health(None, RequestRecord("/health", "GET"))
        assert len(calls) == 2, "refreshed once the cache is old"

    asyncio.run(main())


def test_a_load_balancer_learns_up_or_down_and_an_operator_the_rest(monkeypatch):
    deployment = SimpleNamespace(replica_states={"RUNNING": 2}, status="HEALTHY")
    monkeypatch.setattr(health_module.serve, "status", lambda: SimpleNamespace(
        applications={"glm": SimpleNamespace(deployments={"GLMEngine": deployment})}))
    ctx = ingress_context()
    gate = ProxyGateWatch(ctx.metrics)
    for _ in range(5):
        gate.saw("1")  # what a client forging the gate's header would leave behind
    health = Health(ctx, gate, lambda: "tenants.yaml: line 3: not a mapping")

    async def main():
        anonymous = json.loads((await health(None, RequestRecord("/health", "GET"))).body)
        keyed = json.loads((await health(None, RequestRecord("/health", "GET", caller=default_tenant()))).body)
        tenant = Tenant(name="t", keys=[hash_key("k")])
        tenants = json.loads((await health(None, RequestRecord("/health", "GET", caller=tenant))).body)
        return anonymous, keyed, tenants

    anonymous, keyed, tenants = asyncio.run(main())
    assert anonymous == {"status": "ok"}, "no counts, names or gate state without a key"
    assert tenants == anonymous, "nor with a tenant's key: the rest is for operators"
    assert keyed["engine_replicas_running"] == 2 and keyed["proxy_gate"]["through"] == 5
    assert keyed["tenants_file_stale"] == "tenants.yaml: line 3: not a mapping"
