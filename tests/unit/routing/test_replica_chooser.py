"""Serve's request routers (deployments/routing/replica_chooser.py) driven with fake
replicas (tests/support/routing.py), no Ray cluster."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import ValidationError

from deployments.config.routing import RoutingConfig
from deployments.routing import live_choosers
from deployments.routing.placement_table import PlacementTable
from deployments.routing.policy import request_router_config
from tests.support.routing import FakeReplica, make_router, pending, still, turns


def serve_builds(router_class: type) -> Any:
    """A request router built as Serve 2.60's handle builds one: every argument by keyword
    (ray/serve/_private/router.py), mixins' own arguments among them."""
    from ray.serve._private.common import DeploymentHandleSource, DeploymentID

    return router_class(
        deployment_id=DeploymentID(name="GLMEngine", app_name="glm"), handle_source=DeploymentHandleSource.REPLICA,
        self_node_id="node", self_actor_id="actor", self_actor_handle=None, use_replica_queue_len_cache=True,
        create_replica_wrapper_func=lambda r: r, prefer_local_node_routing=False, prefer_local_az_routing=False,
        self_availability_zone=None)


def test_both_request_routers_build_as_serve_builds_them_and_join_the_seam():
    from deployments.routing import live_choosers
    from deployments.routing.replica_chooser import PolicyReplicaChooser, Pow2ReplicaChooser

    for router_class in (Pow2ReplicaChooser, PolicyReplicaChooser):
        router = serve_builds(router_class)
        assert router.deployment_key == ("glm", "GLMEngine") and router in live_choosers.choosers()


def test_the_serve_adapter_routes_turns_to_their_replica():
    from deployments.routing.replica_chooser import PolicyReplicaChooser

    assert not any(base.__name__ == "FIFOMixin" for base in PolicyReplicaChooser.__mro__)

    async def scenario() -> None:
        router, deployment_id = make_router(max_load_gap=4)
        fakes = [FakeReplica(f"r{i}", deployment_id) for i in range(6)]
        router.update_replicas(fakes)
        await asyncio.sleep(0.05)  # let the base class probe queue lengths (all 0)

        first, second = turns(1, 2)
        request = pending([first, ("127.0.0.1", 1)], "generate", "i1")
        ranks = await router.choose_replicas(list(router.curr_replicas.values()), request)
        assert [len(rank) for rank in ranks] == [1, 2, 3]
        assert request.routing_context.should_backoff, "no busy retry loop without LocalityMixin"
        chosen = ranks[0][0]
        router.on_request_routed(request, chosen.replica_id, None)

        follow = pending([second, ("127.0.0.1", 1)], "generate", "i2")
        ranks = await router.choose_replicas(list(router.curr_replicas.values()), follow)
        assert ranks[0] == [chosen]

        # Overloaded as the queue-length cache sees it: the turn spills to the least loaded.
        for fake in fakes:
            router.replica_queue_len_cache.update(fake.replica_id, 2)
        router.replica_queue_len_cache.update(chosen.replica_id, 20)
        spill = pending([second], "complete", "i3")
        ranks = await router.choose_replicas(list(router.curr_replicas.values()), spill)
        assert ranks[0] != [chosen] and ranks[-1][-1] is chosen
        router.on_request_routed(spill, ranks[0][0].replica_id, None)
        assert router.decision_counts() == {"affinity": 0, "spilled": 1, "new": 1, "hint": 0, "adapter": 0}
        assert live_choosers.decision_counts()["spilled"] >= 1
        assert live_choosers.chooser_for("glm", "GLMEngine") is router

        # Calls without a GenerationRequest (model_info) or not routed by prefix (tokenize).
        for call in (pending([], "model_info", "i4"), pending([first], "tokenize", "i5")):
            ranks = await router.choose_replicas(list(router.curr_replicas.values()), call)
            assert ranks[-1][-1] is chosen and len(ranks) == 2
        assert await router.choose_replicas([], pending([first], "generate", "i6")) == []

        # The replica dies: nothing points at it any more.
        router.on_replica_actor_died(chosen.replica_id)
        keys = router.policy.keys(first)
        assert all(chosen.replica_id.unique_id not in holders for _, holders in router.policy.holders(keys))
        router.update_replicas([f for f in fakes if f is not chosen])
        ranks = await router.choose_replicas(list(router.curr_replicas.values()), pending([second], "generate", "i7"))
        assert chosen not in [r for rank in ranks for r in rank]
        router.on_request_completed(chosen.replica_id, "i1")

    asyncio.run(scenario())


def test_the_serve_adapter_rejects_unknown_kwargs_and_resolves_its_class_path():
    from ray.serve.config import RequestRouterConfig

    from deployments.routing.replica_chooser import PolicyReplicaChooser

    with pytest.raises(ValidationError):
        make_router(max_load_gapp=3)
    config = RequestRouterConfig(**request_router_config(RoutingConfig(policy="prefix")))
    assert config.get_request_router_class().__name__ == PolicyReplicaChooser.__name__


class TableStandIn:
    """PlacementClient over a PlacementTable in this process (the real client talks to a
    Ray actor: tests/e2e/test_routing.py covers it end to end)."""

    def __init__(self, table: PlacementTable, answer: bool = True) -> None:
        self.table, self.answer = table, answer
        self.asked: list[int] = []
        self.assigned: list[tuple[int, str]] = []
        self.counts: dict[str, int] = {}

    async def resolve(self, key: int | None, loads: dict[str, int], adapter: str | None = None
                      ) -> tuple[str, bool] | None:
        self.asked.append(key)
        return self.table.resolve(key, loads, adapter) if self.answer else None

    def assign(self, key: int | None, replica: str, adapter: str | None = None) -> None:
        self.assigned.append((key, replica) if adapter is None else (key, replica, adapter))


def test_the_serve_adapter_takes_the_tables_answer_from_the_request_without_awaiting():
    """The router deployment calls place() before the handle call; choose_replicas reads
    the stamped answer. A conversation this router has routed is not looked up again, and
    a placement made without the table's answer is queued for publishing."""

    async def scenario() -> None:
        router, deployment_id = make_router(directory=True)
        fakes = [FakeReplica(f"r{i}", deployment_id) for i in range(4)]
        router.update_replicas(fakes)
        await asyncio.sleep(0.05)
        table = PlacementTable(clock=still)
        table.assign(0, "r0")  # make r3 the one given fewest conversations lately: not rendezvous luck
        table.assign(1, "r1")
        table.assign(2, "r2")
        router._table = TableStandIn(table)

        first, second = turns(5, 2)
        await router.place(first)
        assert first.placement == ("r3", True)
        request = pending([first, ("127.0.0.1", 1)], "generate", "p1")
        ranks = await router.choose_replicas(list(router.curr_replicas.values()), request)
        assert ranks[0][0].replica_id.unique_id == "r3"
        router.on_request_routed(request, ranks[0][0].replica_id, None)
        assert not router._table.assigned, "the table placed it: nothing to publish"

        await router.place(second)  # this router routed the first turn: no lookup
        assert second.placement is None and len(router._table.asked) == 1
        ranks = await router.choose_replicas(list(router.curr_replicas.values()), pending([second], "generate", "p2"))
        assert ranks[0][0].replica_id.unique_id == "r3"

        # The table did not answer in time: rendezvous placement, published afterwards.
        router._table.answer = False
        other = turns(6, 1)[0]
        await router.place(other)
        assert other.placement is None
        request = pending([other], "generate", "p3")
        ranks = await router.choose_replicas(list(router.curr_replicas.values()), request)
        router.on_request_routed(request, ranks[0][0].replica_id, None)
        assert [replica for _, replica in router._table.assigned] == [ranks[0][0].replica_id.unique_id]

    asyncio.run(scenario())


def test_place_is_a_no_op_without_the_table():
    async def scenario() -> None:
        router, deployment_id = make_router(directory=False)
        router.update_replicas([FakeReplica("r0", deployment_id)])
        request = turns(1, 1)[0]
        await router.place(request)
        assert request.placement is None and router.lookup_counts() == {}

    asyncio.run(scenario())


def test_the_serve_adapter_probes_replicas_whose_load_went_stale():
    """Serve probes only the rank it tries, and the first rank is one replica: without its
    own probes the others' load would go stale and fall back to this router's share."""

    async def scenario() -> None:
        router, deployment_id = make_router()
        a, b = FakeReplica("a", deployment_id), FakeReplica("b", deployment_id)
        router.update_replicas([a, b])
        await asyncio.sleep(0.05)
        cache = router.replica_queue_len_cache
        b.queue_len = 7
        cache.invalidate_key(b.replica_id)  # as if 10 s had passed without news from b
        probes = b.probes
        request = turns(1, 1)[0]
        for n in range(3):  # one probe in flight at a time, however many requests come
            await router.choose_replicas(list(router.curr_replicas.values()), pending([request], "generate", f"s{n}"))
        await asyncio.sleep(0.05)
        assert b.probes == probes + 1
        assert cache.get(b.replica_id) == 7
        ranks = await router.choose_replicas(list(router.curr_replicas.values()), pending([turns(2, 1)[0]], "generate", "s9"))
        assert ranks[0][0] is a, "the new conversation goes to the replica that is really less loaded"

    asyncio.run(scenario())
