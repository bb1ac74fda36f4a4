"""Requests, replicas and policies for the routing tests, and Serve's request routers with
fake replicas (no Ray cluster)."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

from deployments.config.routing import RoutingConfig
from deployments.core.generation import GenerationRequest
from deployments.routing.prefix_policy import PrefixPolicy

SYSTEM = "You are a helpful assistant for ACME Corp. " * 40  # ~1,700 characters every chat shares


def still() -> float:
    """A clock that does not move: a placement table's decay then never breaks a tie, however
    slowly a busy machine runs the test."""
    return 0.0


def replicas(n: int) -> list[str]:
    return [f"replica-{i:02d}" for i in range(n)]


def idle(ids: list[str]) -> dict[str, int]:
    return dict.fromkeys(ids, 0)


def policy(**fields: Any) -> PrefixPolicy:
    return PrefixPolicy(RoutingConfig(policy="prefix", **fields), rng=random.Random(7))


def chat(messages: list[dict[str, Any]], request_id: str = "r") -> GenerationRequest:
    return GenerationRequest(request_id=request_id, messages=messages)


def turns(conversation: int, count: int, opener: str | None = None, greeting: str | None = None
          ) -> list[GenerationRequest]:
    """The requests of ``count`` turns of one conversation: turn k repeats turns 1..k-1
    with the assistant's replies, then the new user message. ``opener``: the first user
    message; ``greeting``: the first reply (as with greedy sampling), else both unique."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    out = []
    for k in range(count):
        user = opener if (opener is not None and k == 0) else f"conversation {conversation} question {k}: why?"
        messages = messages + [{"role": "user", "content": user}]
        out.append(chat(messages, f"c{conversation}t{k}"))
        reply = greeting if (greeting is not None and k == 0) else f"answer {k} for conversation {conversation}"
        messages = messages + [{"role": "assistant", "content": reply}]
    return out


def serve(p: PrefixPolicy, request: Any, loads: dict[str, int]) -> str:
    """Choose like the router does, then learn from the request that was sent."""
    decision = p.choose(request, loads)
    p.record(decision.keys, decision.replica, decision.label)
    return decision.replica


@dataclass
class Hinted:
    """A request that carries the ``session_id`` the router will add to GenerationRequest."""

    messages: list[dict[str, Any]]
    session_id: str | None = None
    prompt: Any = None
    tools: Any = None


POOL = ("r0", "r1", "r2")
"""Three replicas, for the LoRA adapter routing tests."""


def pool_loads(**loads: int) -> dict[str, int]:
    """Each replica of :data:`POOL` with its load: 0 unless given."""
    return {r: loads.get(r, 0) for r in POOL}


def adapter_request(adapter: str | None, prompt: str = "x" * 600) -> GenerationRequest:
    """A completion of ``prompt`` (several blocks long by default) for ``adapter``."""
    return GenerationRequest(request_id="r", prompt=prompt, adapter=adapter)


class FakeReplica:
    """What the base RequestRouter touches on a RunningReplica."""

    def __init__(self, unique_id: str, deployment_id: Any) -> None:
        from ray.serve.request_router import ReplicaID

        self.replica_id = ReplicaID(unique_id=unique_id, deployment_id=deployment_id)
        self.max_ongoing_requests = 256
        self.node_id = "node"
        self.availability_zone = None
        self.multiplexed_model_ids: set[str] = set()
        self.routing_stats: dict[str, Any] = {}

        self.queue_len = 0
        self.probes = 0

    async def get_queue_len(self, *, deadline_s: float) -> int:
        self.probes += 1
        await asyncio.sleep(0.01)
        return self.queue_len


def make_router(**kwargs: Any) -> Any:
    """A PolicyReplicaChooser built as Serve builds one, with ``kwargs`` as its routing options;
    and its deployment's id."""
    from ray.serve._private.common import DeploymentHandleSource, DeploymentID

    from deployments.routing.replica_chooser import PolicyReplicaChooser

    router = PolicyReplicaChooser(
        deployment_id=DeploymentID(name="GLMEngine", app_name="glm"),
        handle_source=DeploymentHandleSource.REPLICA,
        use_replica_queue_len_cache=True,
        self_node_id="node",  # what Serve passes for LocalityMixin; must be accepted and ignored
        prefer_local_node_routing=False,
    )
    router.initialize_state(**{"policy": "prefix", **kwargs})
    return router, DeploymentID(name="GLMEngine", app_name="glm")


def pending(args: list[Any], method: str, internal_id: str) -> Any:
    """A request for a router to route: a call of ``method`` with ``args``."""
    from ray.serve._private.common import RequestMetadata
    from ray.serve.request_router import PendingRequest

    metadata = RequestMetadata(request_id=internal_id, internal_request_id=internal_id, call_method=method)
    return PendingRequest(args=args, kwargs={}, metadata=metadata)
