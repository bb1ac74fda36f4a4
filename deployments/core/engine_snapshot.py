"""What an engine replica reports of itself, typed once for everyone who reads it.

The engine deployment builds an :class:`EngineSnapshot` from vLLM's scheduler statistics
(:mod:`deployments.engine.stats`) and its LoRA adapters (:mod:`deployments.engine.adapters`).
Serve's controller polls it through the replica's ``record_routing_stats`` hook, which
must return a dict, and hands it to every request router; the ingress's ``/metrics``
(:mod:`deployments.ingress.metrics`) and the routing layer
(:func:`deployments.routing.live_choosers.engine_replica_stats`) read it back as an
:class:`EngineSnapshot`. :meth:`EngineSnapshot.to_wire` and :meth:`EngineSnapshot.from_wire`
are the one translation, so a renamed field fails a unit test instead of silently
dropping a metric series.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class AdapterCounts:
    """One LoRA adapter's loads on one engine replica, since it started."""

    loads: int = 0
    load_seconds: float = 0.0
    evictions: int = 0


@dataclass(frozen=True, slots=True)
class EngineSnapshot:
    """Counters since the engine started, and its scheduler's latest state."""

    prefix_cache_queries: int = 0
    """Prompt tokens looked up in the prefix cache."""
    prefix_cache_hits: int = 0
    """Of those, tokens found there (no prefill spent on them)."""
    prompt_tokens_computed: int = 0
    """Prompt tokens the engine had to prefill."""
    generation_tokens: int = 0
    preemptions: int = 0
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    """Fraction of the KV cache's blocks in use, 0 to 1."""
    adapters: tuple[str, ...] = ()
    """The LoRA adapters the engine holds now, sorted."""
    adapter_counts: Mapping[str, AdapterCounts] = field(default_factory=dict)
    """Loads, load time and evictions by adapter."""

    def to_wire(self) -> dict[str, Any]:
        """Plain values, as Serve's ``record_routing_stats`` hook returns them."""
        wire = {f.name: getattr(self, f.name) for f in fields(self)}
        wire["adapters"] = list(self.adapters)
        wire["adapter_counts"] = {name: asdict(counts) for name, counts in self.adapter_counts.items()}
        return wire

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any] | None) -> EngineSnapshot | None:
        """The snapshot :meth:`to_wire` wrote, or None before the replica's first report
        (Serve hands an empty dict until its controller has polled the replica)."""
        if not wire:
            return None
        known = {f.name for f in fields(cls)} - {"adapters", "adapter_counts"}
        return cls(**{name: value for name, value in wire.items() if name in known},
                   adapters=tuple(wire.get("adapters", ())),
                   adapter_counts={name: AdapterCounts(**counts)
                                   for name, counts in wire.get("adapter_counts", {}).items()})
