"""Requests, replicas and policies for the routing tests."""

from __future__ import annotations

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
