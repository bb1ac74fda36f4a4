"""Serve request routers for the engine deployment: where a routing policy meets Serve.

:class:`PolicyReplicaChooser` runs any :class:`~deployments.routing.policy.RoutingPolicy`
(``prefix``, or a plug-in) inside Serve 2.60's ``RequestRouter`` interface;
:class:`Pow2ReplicaChooser` is Serve's own power-of-two-choices router (``pow2``). Both run
inside every process that holds a handle to the engine (the router deployment's replicas),
and register with :mod:`deployments.routing.live_choosers`, where the ingress and ``/metrics``
find them. ``request_router_config`` (:mod:`deployments.config.routing`) tells Serve which
one, and hands the routing fields to :meth:`PolicyReplicaChooser.initialize_state`.

Why no mixins
-------------
* ``FIFOMixin`` hands a replica that a routing task found to the *oldest* waiting
  request, not to the request it was chosen for: that breaks affinity. Without it the
  base class fulfils the request whose ``internal_request_id`` the task routed.
* ``LocalityMixin`` / ``MultiplexMixin`` narrow the candidates by node or model id;
  neither applies (one model, engines anywhere). ``LocalityMixin`` is also what sets
  ``routing_context.should_backoff``: without it the base class retries a request
  that every replica refused in a tight loop, so :meth:`choose_replicas` sets it.

Ranks returned: ``[[chosen], [two least loaded others], [the rest]]``. Serve tries
each rank in turn and takes the replica with the shortest queue within it; a replica
whose queue is full refuses and the next rank is tried.

Load is Serve's queue-length cache (what replicas reported with their last accept/refuse
or probe), falling back to this router's own count of requests in flight when an entry is
missing or stale. Serve probes only the replicas of the rank it is trying, and the first
rank is one replica, so the others' entries would go stale (10 s) and their load would be
this router's share alone (half the picture with 2 router replicas):
:meth:`choose_replicas` probes stale candidates in the background, as Serve's own routers
do for the candidates they look at.

The shared placement table (``routing.directory``) is asked *before* a request enters the
handle, not in :meth:`choose_replicas`: awaited inside Serve's routing step, the lookup
held every routing task, so a burst waited in the handle's bounded queue and could overflow
it into 503s (docs/measurements.md#routing). The ingress has
:meth:`PolicyReplicaChooser.place` run on this router's loop
(:func:`deployments.routing.live_choosers.ask_placement_table`), which stamps the answer on the
request (``GenerationRequest.placement``); :meth:`choose_replicas` only reads it. Only a request whose conversation this router has not routed before is looked
up: a new conversation, or turns another router replica routed so far.

Learning happens in :meth:`on_request_routed`, which Serve calls when a replica has
accepted a request (under its rejection protocol, the default outside Ray Client).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from deployments.config.routing import RoutingConfig
from deployments.core import serve_private
from deployments.core.generation import GenerationRequest
from deployments.routing import live_choosers
from deployments.routing.placement_service import PlacementClient, placement_table_name
from deployments.routing.policy import ADAPTER_SLOTS, Decision, RoutingPolicy, policy_class

logger = logging.getLogger("ray.serve")

ROUTED_METHODS = frozenset({"generate", "complete"})
"""Engine methods routed by the policy; others (``tokenize``, ``model_info``) go to the least loaded."""

_DECISION_ATTR = "_glm_routing_decision"


def _join_seam(router: Any, deployment_id: Any) -> None:
    """What :mod:`deployments.routing.live_choosers` reads of every glm-serve request router."""
    router.deployment_key = (deployment_id.app_name, deployment_id.name)
    router.loop = None  # Serve's routing loop, once the router has run on it: where its state is touched
    router.lookup_timeout_s = None  # with the shared placement table: how long a lookup may take
    live_choosers.register(router)


class Pow2ReplicaChooser(serve_private.pow2_router_class()):
    """Serve's default power-of-two-choices router, unchanged but for registering itself
    (:mod:`deployments.routing.live_choosers`)."""

    def __init__(self, *args: Any, deployment_id: Any, **kwargs: Any) -> None:
        # by keyword, as Serve passes it: Serve's own router puts mixins first in its MRO
        super().__init__(*args, deployment_id=deployment_id, **kwargs)
        _join_seam(self, deployment_id)

    def decision_counts(self) -> dict[str, int]:
        return {}

    def lookup_counts(self) -> dict[str, int]:
        return {}


def _ranks(replicas: list[RunningReplica]) -> list[list[RunningReplica]]:
    return [rank for rank in (replicas[:2], replicas[2:]) if rank]


class PolicyReplicaChooser(RequestRouter):
    """Tries first the engine replica a :class:`RoutingPolicy` chooses, then the others by load."""

    def __init__(self, *args: Any, deployment_id: Any, **kwargs: Any) -> None:
        # by keyword, as Serve passes it: Serve's own router puts mixins first in its MRO
        super().__init__(*args, deployment_id=deployment_id, **kwargs)
        _join_seam(self, deployment_id)
        self._policy: RoutingPolicy = policy_class("prefix")(RoutingConfig(policy="prefix"))
        self._table: PlacementClient | None = None
        self._in_flight: dict[str, int] = {}
        self._in_flight_by_request: dict[str, str] = {}
        self._probing: set[ReplicaID] = set()

    def initialize_state(self, **kwargs: Any) -> None:
        """Build the policy from ``request_router_kwargs`` (the fields of
        :class:`~deployments.config.routing.RoutingConfig`); a wrong field fails here."""
        adapter_slots = kwargs.pop(ADAPTER_SLOTS, 1)  # the model's, not a routing field (request_router_config)
        cfg = RoutingConfig(**kwargs)
        self._policy = policy_class(cfg.policy)(cfg)
        self._policy.set_replicas([rid.unique_id for rid in self.curr_replicas])
        if cfg.directory and self._policy.uses_placement_table:
            name = placement_table_name(*self.deployment_key)
            self._table = PlacementClient(name, cfg.max_entries, cfg.directory_timeout_s, cfg.placement_memory_s,
                                          adapter_slots, cfg.max_load_gap, cfg.max_load_factor)
            self.lookup_timeout_s = cfg.directory_timeout_s
            try:
                self._table.start()
            except RuntimeError:  # no running loop yet: the first request connects
                pass

    @property
    def policy(self) -> RoutingPolicy:
        return self._policy

    def decision_counts(self) -> dict[str, int]:
        """Requests routed by this router so far, by decision label."""
        return dict(self._policy.counts)

    def lookup_counts(self) -> dict[str, int]:
        """This router's lookups in the shared placement table, by outcome."""
        return dict(self._table.counts) if self._table is not None else {}

    async def place(self, request: GenerationRequest) -> None:
        """Ask the shared placement table where ``request``'s conversation lives and stamp the
        answer on ``request.placement`` for :meth:`choose_replicas`; do nothing when the table
        is off or the policy already knows where the conversation's prefix is. Runs on this
        router's loop (:func:`~deployments.routing.live_choosers.ask_placement_table`)."""
        if self._table is None:
            return
        loads = self._loads(list(self.curr_replicas.values()))
        if not loads:
            return
        query = self._policy.placement_query(request, loads)
        if query is not None:
            request.placement = await self._table.resolve(query[0], loads, query[1])

    # -- choosing ---------------------------------------------------------------------

    def _load(self, replica: RunningReplica) -> int:
        queue_len = self.replica_queue_len_cache.get(replica.replica_id)
        if queue_len is not None:
            return queue_len
        return self._in_flight.get(replica.replica_id.unique_id, 0)

    def _loads(self, replicas: list[RunningReplica]) -> dict[str, int]:
        return {r.replica_id.unique_id: self._load(r) for r in replicas}

    def _refresh_stale(self, replicas: list[RunningReplica]) -> None:
        """Probe, in the background, each replica whose queue length is unknown or stale and
        is not being probed already; the answers land in the cache for later decisions."""
        cache = self.replica_queue_len_cache
        stale = [r for r in replicas if r.replica_id not in self._probing and cache.get(r.replica_id) is None]
        if not stale:
            return
        ids = {r.replica_id for r in stale}
        self._probing |= ids
        task = asyncio.get_running_loop().create_task(serve_private.probe_queue_lens(self, stale))
        task.add_done_callback(lambda _: self._probing.difference_update(ids))

    @staticmethod
    def _routed_request(pending_request: PendingRequest | None) -> GenerationRequest | None:
        if pending_request is None or not pending_request.args:
            return None
        if serve_private.call_method(pending_request) not in ROUTED_METHODS:
            return None
        request = pending_request.args[0]
        return request if isinstance(request, GenerationRequest) else None

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True
        if not candidate_replicas:
            return []
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        loads = self._loads(candidate_replicas)
        self._refresh_stale(candidate_replicas)
        request = self._routed_request(pending_request)
        chosen = None
        if request is not None:
            try:
                # Never awaits: the table's answer, if any, came with the request (place).
                decision = self._policy.choose(request, loads, placed=request.placement)
            except Exception:  # never let the policy break routing: fall back to load only
                logger.exception("routing policy %r failed; routing by load", self._policy.name)
            else:
                setattr(pending_request, _DECISION_ATTR, decision)
                chosen = by_id.get(decision.replica)
        rest = sorted((r for r in candidate_replicas if r is not chosen),
                      key=lambda r: loads[r.replica_id.unique_id])
        return ([[chosen]] if chosen is not None else []) + _ranks(rest)

    # -- learning ---------------------------------------------------------------------

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        uid = replica_id.unique_id
        request_id = serve_private.internal_request_id(pending_request)
        if request_id not in self._in_flight_by_request:
            self._in_flight_by_request[request_id] = uid
            self._in_flight[uid] = self._in_flight.get(uid, 0) + 1
        try:
            decision: Decision | None = getattr(pending_request, _DECISION_ATTR, None)
            request = self._routed_request(pending_request)
            if decision is None and request is None:
                return
            key = self._policy.routed(decision, request, uid)
            if self._table is None:
                return
            # The table learns where each adapter went, unless it sent it there itself.
            adapter = getattr(request, "adapter", None)
            placed = getattr(request, "placement", None)
            if adapter is not None and placed is not None and placed[0] == uid:
                adapter = None
            if key is not None or adapter is not None:
                self._table.assign(key, uid, adapter)
        except Exception:
            logger.exception("recording a routing decision failed")

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        uid = self._in_flight_by_request.pop(internal_request_id, None)
        if uid is not None and uid in self._in_flight:
            self._in_flight[uid] = max(0, self._in_flight[uid] - 1)

    # -- replicas ---------------------------------------------------------------------

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        live = {r.replica_id.unique_id for r in replicas}
        self._policy.set_replicas(live)
        for uid in [u for u in self._in_flight if u not in live]:
            del self._in_flight[uid]

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._policy.remove_replica(replica_id.unique_id)
        self._in_flight.pop(replica_id.unique_id, None)
