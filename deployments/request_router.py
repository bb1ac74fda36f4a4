"""Serve request routers for the engine deployment: :class:`PrefixAffinityRouter`
(``routing.policy: prefix``) and :class:`PowerOfTwoRouter` (``pow2``, Serve's default).

They run inside every process that holds a handle to the engine (the router
deployment's replicas). Both register themselves so that ``/metrics`` can read the
engine statistics Serve hands to every request router
(:func:`deployments.engine_stats.engine_replica_stats`).

Serve pickles this module *by value* into each process that routes: module-level state
here would be a private copy per class, which is why the registry lives in
:mod:`deployments.engine_stats` (imported by reference).
:class:`PrefixAffinityRouter` plugs :class:`deployments.routing.PrefixPolicy` into Serve
2.60's ``RequestRouter`` interface. Enable it with
``EngineDeployment.options(request_router_config=request_router_config(cfg))``
(:func:`deployments.routing.request_router_config`); Serve passes the policy fields
to :meth:`PrefixAffinityRouter.initialize_state`.

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

Load is the base class's queue-length cache (what replicas reported with their last
accept/refuse or probe), falling back to this router's own count of requests in flight
when an entry is missing or stale. Serve probes only the replicas of the rank it is
trying, and this router's first rank is one replica, so the others' entries would go
stale (10 s) and their load would be this router's share alone (half the picture with 2
router replicas): :meth:`choose_replicas` probes stale candidates in the background, as
Serve's own routers do for the candidates they look at.

The shared placement table (``routing.directory``, :mod:`deployments.routing_directory`)
is asked *before* a request enters the handle, not in :meth:`choose_replicas`: the
router deployment awaits :meth:`PrefixAffinityRouter.place` on its own event loop, which
stamps the answer on the request (``GenerationRequest.placement``), and
:meth:`choose_replicas` only reads it. Awaited inside Serve's routing step, the lookup
held every routing task, so a burst waited in the handle's bounded queue and overflowed
it (a 503 in the chaos test); in the ingress each request waits for its own answer
alone, at most ``routing.directory_timeout_s``. Only a request whose conversation this
router has not routed before is looked up: a new conversation, or turns another router
replica routed so far.

Learning happens in :meth:`on_request_routed`, which Serve calls when a replica has
accepted a request. (Serve only calls it under its rejection protocol, the default
outside Ray Client; without it this router still places conversations by rendezvous
hashing, only without the learned refinements.)
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

# Serve 2.60 exports its base class but not its default router: PowerOfTwoRouter below
# subclasses it unchanged (the import is checked by tests/unit/test_routing.py).
from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from deployments.engine_stats import register_router
from deployments.generation import GenerationRequest
from deployments.routing import Decision, PrefixPolicy
from deployments.routing_directory import DirectoryClient, directory_name

logger = logging.getLogger("ray.serve")

ROUTED_METHODS = frozenset({"generate", "complete"})
"""Engine methods routed by prefix; others (``tokenize``, ``model_info``) go to the least loaded."""

_DECISION_ATTR = "_glm_prefix_decision"


class PowerOfTwoRouter(PowerOfTwoChoicesRequestRouter):
    """Serve's default power-of-two-choices router, unchanged but for registering itself
    (:func:`deployments.engine_stats.register_router`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        register_router(self)


def _ranks(replicas: list[RunningReplica]) -> list[list[RunningReplica]]:
    return [rank for rank in (replicas[:2], replicas[2:]) if rank]


class PrefixAffinityRouter(RequestRouter):
    """Sends a conversation's next turn to the engine replica holding its prefix."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        register_router(self)
        self._policy = PrefixPolicy()
        self._directory: DirectoryClient | None = None  # placements to publish, from Serve's routing loop
        self._lookups: DirectoryClient | None = None  # lookups, from the router deployment's loop (place)
        self._in_flight: dict[str, int] = {}
        self._in_flight_by_request: dict[str, str] = {}
        self._probing: set[ReplicaID] = set()

    def initialize_state(self, **kwargs: Any) -> None:
        """Build the policy from ``request_router_kwargs`` (the fields of
        :class:`~deployments.routing.RoutingConfig` but ``policy``); a wrong field fails here."""
        self._policy = PrefixPolicy.from_kwargs(**kwargs)
        self._policy.set_replicas([rid.unique_id for rid in self._replicas])
        cfg = self._policy.config
        if cfg.directory:
            # Two clients of the same actor, one per event loop that uses it: a client's
            # background tasks (connecting, flushing) live on the loop that made them.
            name = directory_name(self._deployment_id.app_name, self._deployment_id.name)
            self._directory = DirectoryClient(name, cfg.max_entries, cfg.directory_timeout_s, cfg.placement_memory_s)
            self._lookups = DirectoryClient(name, cfg.max_entries, cfg.directory_timeout_s, cfg.placement_memory_s)
            try:
                self._directory.start()
            except RuntimeError:  # no running loop yet: the first request connects
                pass

    @property
    def policy(self) -> PrefixPolicy:
        return self._policy

    def decision_counts(self) -> dict[str, int]:
        """Requests routed by this router so far, by decision label."""
        return dict(self._policy.counts)

    def directory_counts(self) -> dict[str, int]:
        """This router's lookups in the shared placement table, by outcome."""
        return dict(self._lookups.counts) if self._lookups is not None else {}

    async def place(self, request: GenerationRequest) -> None:
        """Ask the shared placement table where ``request``'s conversation lives and stamp the
        answer on ``request.placement`` for :meth:`choose_replicas`; do nothing when the table
        is off or this router already knows where the conversation's prefix is.

        Called by the router deployment on its own event loop, before the handle call, and
        only from that loop. It reads this router's state (written on Serve's routing loop)
        without writing it: single dict lookups and copies, atomic under the GIL, and a
        stale read costs at most a lookup the router did not need."""
        if self._lookups is None:
            return
        loads = self._loads(list(self._replicas.values()))
        if not loads:
            return
        policy = self._policy
        key = policy.placement_key(request, loads, policy.keys(request))
        if key is not None:
            request.placement = await self._lookups.resolve(key, loads)

    # -- choosing ---------------------------------------------------------------------

    def _load(self, replica: RunningReplica) -> int:
        queue_len = self._replica_queue_len_cache.get(replica.replica_id)
        if queue_len is not None:
            return queue_len
        return self._in_flight.get(replica.replica_id.unique_id, 0)

    def _loads(self, replicas: list[RunningReplica]) -> dict[str, int]:
        return {r.replica_id.unique_id: self._load(r) for r in replicas}

    def _refresh_stale(self, replicas: list[RunningReplica]) -> None:
        """Probe, in the background, each replica whose queue length is unknown or stale and
        is not being probed already; the answers land in the cache for later decisions."""
        stale = [r for r in replicas
                 if r.replica_id not in self._probing and self._replica_queue_len_cache.get(r.replica_id) is None]
        if not stale:
            return
        ids = {r.replica_id for r in stale}
        self._probing |= ids
        task = asyncio.get_running_loop().create_task(self._probe_queue_lens(stale, 0))
        task.add_done_callback(lambda _: self._probing.difference_update(ids))

    @staticmethod
    def _routed_request(pending_request: PendingRequest | None) -> GenerationRequest | None:
        if pending_request is None or not pending_request.args:
            return None
        if pending_request.metadata.call_method not in ROUTED_METHODS:
            return None
        request = pending_request.args[0]
        return request if isinstance(request, GenerationRequest) else None

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
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
                decision = self._policy.choose(request, loads, None, request.placement)
            except Exception:  # never let the policy break routing: fall back to load only
                logger.exception("prefix routing failed; routing by load")
            else:
                setattr(pending_request, _DECISION_ATTR, decision)
                chosen = by_id[decision.replica]
        rest = sorted((r for r in candidate_replicas if r is not chosen),
                      key=lambda r: loads[r.replica_id.unique_id])
        return ([[chosen]] if chosen is not None else []) + _ranks(rest)

    # -- learning ---------------------------------------------------------------------

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        uid = replica_id.unique_id
        request_id = pending_request.metadata.internal_request_id
        if request_id not in self._in_flight_by_request:
            self._in_flight_by_request[request_id] = uid
            self._in_flight[uid] = self._in_flight.get(uid, 0) + 1
        try:
            decision: Decision | None = getattr(pending_request, _DECISION_ATTR, None)
            if decision is not None:
                moved = decision.replica != uid  # the chosen replica refused: Serve took another
                self._policy.record(decision.keys, uid, "spilled" if moved else decision.label)
                if (decision.publish or moved) and decision.key is not None and self._directory is not None:
                    self._directory.assign(decision.key, uid)
                return
            request = self._routed_request(pending_request)
            if request is not None:
                self._policy.record(self._policy.keys(request), uid, "new")
        except Exception:
            logger.exception("recording a prefix-routing decision failed")

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
