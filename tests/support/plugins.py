"""A chat format and a routing policy defined outside glm-serve, as a user's plug-ins are."""

from __future__ import annotations

from typing import Any

from chat_formats import ChatFormat
from deployments.routing import Decision, RoutingPolicy


class ShoutFormat(ChatFormat):
    """Every message upper-cased, one a line."""

    name = "shout"

    def render(self, messages: list[dict[str, Any]], tools: Any, tokenizer: Any) -> str:
        return "".join(f"{m['role']}: {m['content'].upper()}\n" for m in messages) + "assistant:"


class BusiestPolicy(RoutingPolicy):
    """The most loaded replica first: the opposite of every sane policy, so a test can see it."""

    name = "busiest"
    labels = ("busiest",)

    def choose(self, request: Any, loads: Any, placed: Any = None) -> Decision:
        return Decision(max(sorted(loads), key=loads.__getitem__), "busiest")


class NotAPolicy:
    name = "nope"
