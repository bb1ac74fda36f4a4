"""The seam between the ingress and Serve's request routers (deployments/routing/live_choosers.py)."""

from __future__ import annotations

from deployments.core.engine_snapshot import EngineSnapshot
from deployments.routing.live_choosers import engine_replica_stats, register


def test_routers_report_what_serve_collected_from_each_replica():
    class _Replica:
        def __init__(self, uid, stats):
            self.replica_id = type("Id", (), {"unique_id": uid})()
            self.routing_stats = stats

    class _Router:
        curr_replicas = {1: _Replica("a", {"running": 2}), 2: _Replica("b", None)}

    router = _Router()
    register(router)
    assert engine_replica_stats()["a"] == EngineSnapshot(running=2)
    assert "b" not in engine_replica_stats(), "a replica not yet polled reports nothing"
