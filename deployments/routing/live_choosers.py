"""The seam between the ingress and Serve's request routers in one router replica.

Serve builds each request router (glm-serve's :mod:`deployments.routing.replica_chooser`
classes) inside the handle, in the process that routes, on Serve's routing event loop, and
gives the ingress no reference to it. The choosers register here as they are built, keyed
by the (application, deployment) Serve's constructor gives them; the ingress and
``/metrics`` find them here by their handle's public ``app_name`` and ``deployment_name``.

One rule keeps it safe across threads: a chooser's state is only touched on its own loop.
:func:`ask_placement_table` runs the lookup there (``run_coroutine_threadsafe``) and the
ingress awaits the answer on its loop; ``/metrics`` reads plain counters (copied dicts).

Serve pickles the chooser module by value into every process that routes, so module-level
state there would be a private copy per class: the registry is here, imported by reference.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from deployments.core.engine_snapshot import EngineSnapshot

_CHOOSERS: weakref.WeakSet[Any] = weakref.WeakSet()


def register(chooser: Any) -> None:
    """Called by each of glm-serve's request routers as Serve builds it."""
    _CHOOSERS.add(chooser)


def choosers() -> list[Any]:
    """glm-serve's request routers in this process."""
    return list(_CHOOSERS)


def chooser_for(app_name: str, deployment_name: str) -> Any | None:
    """The request router of deployment ``deployment_name`` of application ``app_name`` in
    this process, once the handle made it (at its first request), else None."""
    for chooser in choosers():
        if chooser.deployment_key == (app_name, deployment_name):
            return chooser
    return None


HOP_MARGIN_S = 0.05
"""Time allowed, on top of the table's own timeout, for the hop to the router's loop and back."""


async def ask_placement_table(app_name: str, deployment_name: str, request: Any) -> None:
    """Have the deployment's request router ask the shared placement table where
    ``request``'s conversation lives, on the router's own loop; the answer is stamped on
    ``request.placement``. A no-op where the policy has no table, or before the handle's
    first request made the router. At most ``routing.directory_timeout_s`` (plus the hop)."""
    chooser = chooser_for(app_name, deployment_name)
    loop = getattr(chooser, "loop", None)
    if loop is None or chooser.lookup_timeout_s is None:
        return
    future = asyncio.run_coroutine_threadsafe(chooser.place(request), loop)
    try:
        await asyncio.wait_for(asyncio.wrap_future(future), chooser.lookup_timeout_s + HOP_MARGIN_S)
    except asyncio.TimeoutError:
        future.cancel()


def engine_replica_stats() -> dict[str, EngineSnapshot]:
    """The latest statistics of every engine replica the request routers in this process
    know, by replica id: what each replica's ``record_routing_stats`` returned when Serve's
    controller last polled it (a replica not polled yet is left out)."""
    stats: dict[str, EngineSnapshot] = {}
    for chooser in choosers():
        for replica in list(chooser.curr_replicas.values()):
            snapshot = EngineSnapshot.from_wire(replica.routing_stats)
            if snapshot is not None:
                stats[replica.replica_id.unique_id] = snapshot
    return stats


def decision_counts() -> dict[str, int]:
    """Routing decisions of every request router in this process, by label."""
    totals: dict[str, int] = {}
    for chooser in choosers():
        for label, count in chooser.decision_counts().items():
            totals[label] = totals.get(label, 0) + count
    return totals


def lookup_counts(outcomes: tuple[str, ...]) -> dict[str, int]:
    """Placement-table lookups of every request router in this process, by outcome; every
    outcome from the start, so a dashboard's query has a series with the table off."""
    totals = dict.fromkeys(outcomes, 0)
    for chooser in choosers():
        for outcome, count in chooser.lookup_counts().items():
            totals[outcome] = totals.get(outcome, 0) + count
    return totals
