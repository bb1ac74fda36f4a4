"""EngineSnapshot: what an engine replica reports, one type from the engine's stat logger
to the ingress's /metrics; a field renamed on one side fails here, not in production."""

from __future__ import annotations

from dataclasses import fields

from prometheus_client import generate_latest

from deployments.core.engine_snapshot import AdapterCounts, EngineSnapshot
from deployments.engine.stats import EngineStats
from deployments.ingress.metrics import IngressMetrics
from deployments.routing import live_choosers


def test_one_engine_step_reaches_every_counter_of_the_snapshot():
    from types import SimpleNamespace

    stats = EngineStats()
    stats.record(SimpleNamespace(num_running_reqs=1, num_waiting_reqs=2, kv_cache_usage=0.5,
                                 prefix_cache_stats=SimpleNamespace(queries=3, hits=4)),
                 SimpleNamespace(num_generation_tokens=5, num_preempted_reqs=6,
                                 prompt_token_stats=SimpleNamespace(computed=7)))
    snapshot = stats.snapshot()
    counters = [f.name for f in fields(EngineSnapshot) if f.name not in ("adapters", "adapter_counts")]
    assert all(getattr(snapshot, name) for name in counters), snapshot


def test_the_wire_form_reads_back_as_written_and_nothing_before_the_first_poll():
    snapshot = EngineSnapshot(prefix_cache_hits=7, kv_cache_usage=0.5, adapters=("a",),
                              adapter_counts={"a": AdapterCounts(2, 0.25, 1)})
    assert EngineSnapshot.from_wire(snapshot.to_wire()) == snapshot
    assert EngineSnapshot.from_wire({}) is None and EngineSnapshot.from_wire(None) is None
    assert EngineSnapshot.from_wire({"running": 3, "a_field_of_a_newer_engine": 1}) == EngineSnapshot(running=3)


def test_every_field_of_the_snapshot_reaches_a_metrics_series():
    counters = [f.name for f in fields(EngineSnapshot) if f.name not in ("adapters", "adapter_counts")]
    # A distinct value per field, so each series shows which field it read.
    values = {name: 100 + i for i, name in enumerate(counters)}
    snapshot = EngineSnapshot(**values, adapters=("x", "y"), adapter_counts={"x": AdapterCounts(3, 1.5, 2)})

    class _Replica:
        replica_id = type("Id", (), {"unique_id": "r1"})()
        routing_stats = snapshot.to_wire()

    class _Chooser:
        curr_replicas = {1: _Replica()}

        def decision_counts(self):
            return {}

        def lookup_counts(self):
            return {}

    chooser = _Chooser()
    live_choosers.register(chooser)
    text = generate_latest(IngressMetrics().registry).decode()
    for name, value in values.items():
        assert f'replica="r1"}} {float(value)}' in text, f"no series shows EngineSnapshot.{name}"
    assert 'glm_serve_engine_adapter_loads_total{adapter="x",replica="r1"} 3.0' in text
    assert 'glm_serve_engine_adapter_evictions_total{adapter="x",replica="r1"} 2.0' in text
    assert 'glm_serve_engine_adapters_loaded{replica="r1"} 2.0' in text
