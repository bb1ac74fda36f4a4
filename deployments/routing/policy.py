"""What a routing policy is, and the registry that finds one by name or import path.

A routing policy is pure logic (no Ray): given a request and the live engine replicas'
loads, it names the replica to try first, and it may learn from where each request
went. glm-serve's Serve request router (:class:`~deployments.routing.replica_chooser.
PolicyReplicaChooser`) hosts it inside every router replica's handle to the engines.

Policies are plug-ins, as vLLM's tool parsers and Ray's ``request_router_class`` are:
``engine.routing.policy`` takes a registered name (``pow2``, ``prefix``) or an import
path (``my_pkg.my_module:MyPolicy``) of a :class:`RoutingPolicy` subclass. The shipped
policies are import paths in :data:`deployments.config.routing.BUILTIN_POLICIES`, loaded on
first use; a user's own may also register by name with :func:`register_policy`::

    from deployments.routing import Decision, RoutingPolicy, register_policy

    @register_policy
    class Busiest(RoutingPolicy):
        name = "busiest"

        def choose(self, request, loads, placed=None):
            return Decision(max(loads, key=loads.get), "busiest")

A policy reads its own settings from ``RoutingConfig.options`` (free-form) or the shared
fields of :class:`~deployments.config.routing.RoutingConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from chat_formats.plugins import PluginRegistry
from deployments.config.routing import BUILTIN_POLICIES

if TYPE_CHECKING:
    from deployments.config.routing import RoutingConfig

POLICY_CHOOSER = "deployments.routing.replica_chooser.PolicyReplicaChooser"
"""Serve's request router class that hosts a :class:`RoutingPolicy`."""


@dataclass(slots=True)
class Decision:
    """Where one request goes (``replica``), and why (``label``, one of the policy's
    :attr:`RoutingPolicy.labels`, counted in ``/metrics``)."""

    replica: str
    label: str


class RoutingPolicy:
    """Base of every routing policy. One instance per router replica; called on one event
    loop (Serve's routing loop), so it needs no locks.

    ``choose`` must have no side effects: Serve may call it several times for one request
    while replicas refuse it. ``routed`` learns from where the request was accepted."""

    name: ClassVar[str]
    labels: ClassVar[tuple[str, ...]] = ("chosen",)
    """Every label :meth:`choose` may give, so ``/metrics`` has a series for each from the start."""
    serve_router: ClassVar[str] = POLICY_CHOOSER
    """Import path of the Serve request router that runs this policy."""
    uses_placement_table: ClassVar[bool] = False
    """Whether the policy wants the shared placement table (``placement_key``)."""

    def __init__(self, config: RoutingConfig) -> None:
        self.config = config
        self.counts: dict[str, int] = dict.fromkeys(self.labels, 0)

    def choose(self, request: Any, loads: Mapping[str, int], placed: tuple[str, bool] | None = None) -> Decision:
        """The replica for ``request`` (a :class:`~deployments.core.generation.GenerationRequest`)
        among the live replicas ``loads`` names (replica id to ongoing requests).
        ``placed``: the shared placement table's answer for :meth:`placement_key`."""
        raise NotImplementedError

    def placement_key(self, request: Any, loads: Mapping[str, int]) -> int | None:
        """The conversation key to ask the shared placement table about, or None."""
        return None

    def placement_query(self, request: Any, loads: Mapping[str, int]) -> tuple[int | None, str | None] | None:
        """What to ask the shared placement table: (conversation key or None, LoRA adapter
        or None), or None to ask nothing. The base asks about :meth:`placement_key` alone."""
        key = self.placement_key(request, loads)
        return None if key is None else (key, None)

    def routed(self, decision: Decision | None, request: Any, replica: str) -> int | None:
        """``replica`` accepted ``request`` (``decision``: this policy's, or None when it made
        none). Returns a conversation key the placement table should map to ``replica``
        (a placement it did not make), else None. The base counts the decision."""
        if decision is not None:
            label = decision.label if decision.replica == replica else "spilled"
            self.counts[label] = self.counts.get(label, 0) + 1
        return None

    def set_replicas(self, replicas: Sequence[str] | set[str]) -> None:
        """The live replicas are exactly ``replicas``."""

    def remove_replica(self, replica: str) -> None:
        """``replica`` died."""


_REGISTRY: PluginRegistry[type[RoutingPolicy]] = PluginRegistry("routing policy", RoutingPolicy, BUILTIN_POLICIES)


def register_policy(cls: type[RoutingPolicy]) -> type[RoutingPolicy]:
    """Make ``cls`` choosable as ``routing.policy: <cls.name>`` (a class decorator)."""
    return _REGISTRY.register(cls)


def registered_policies() -> dict[str, type[RoutingPolicy]]:
    """The registered policies by name (the shipped ones, and any imported plug-in)."""
    return _REGISTRY.classes()


def policy_class(name_or_path: str) -> type[RoutingPolicy]:
    """The policy called ``name_or_path``, or the :class:`RoutingPolicy` subclass at that
    import path (``module:Class`` or ``module.Class``), which is then registered. Raises
    ValueError naming the known policies (:class:`chat_formats.plugins.PluginRegistry`)."""
    return _REGISTRY.get(name_or_path)


ADAPTER_SLOTS = "adapter_slots"
"""The request router's keyword for how many adapters an engine replica holds (the model's
``lora.max_cpu_loras``): not a routing field, so the chooser takes it out before validating."""


def request_router_config(cfg: RoutingConfig, adapter_slots: int = 1) -> dict[str, Any]:
    """What ``Deployment.options(request_router_config=...)`` needs for ``cfg``, with engine
    replicas that each hold ``adapter_slots`` LoRA adapters.
    (``DeploymentConfig`` validates on assignment, so the dict becomes a
    ``RequestRouterConfig``.) Every policy runs in a Serve router class of glm-serve's, so
    that ``/metrics`` can read the engine statistics Serve hands to request routers."""
    router = policy_class(cfg.policy).serve_router
    kwargs = {**cfg.policy_kwargs(), ADAPTER_SLOTS: adapter_slots} if router == POLICY_CHOOSER else {}
    return {"request_router_class": router, "request_router_kwargs": kwargs,
            "request_routing_stats_period_s": cfg.stats_period_s}
