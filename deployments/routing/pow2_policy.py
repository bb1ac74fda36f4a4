"""``routing.policy: pow2``: Serve's own power-of-two-choices router, by load alone.

Serve's router runs it (:class:`~deployments.routing.replica_chooser.Pow2ReplicaChooser`,
Serve's class unchanged but for registering itself so that ``/metrics`` can read the
engine statistics); :meth:`Pow2Policy.choose` is the same rule for a host that calls it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from deployments.routing.policy import Decision, RoutingPolicy


class Pow2Policy(RoutingPolicy):
    """Two replicas at random; the less loaded one."""

    name = "pow2"
    serve_router = "deployments.routing.replica_chooser.Pow2ReplicaChooser"

    def choose(self, request: Any, loads: Mapping[str, int], placed: tuple[str, bool] | None = None) -> Decision:
        if not loads:
            raise ValueError("no replica to choose from")
        pair = random.sample(list(loads), min(2, len(loads)))
        return Decision(min(pair, key=loads.__getitem__), "chosen")
