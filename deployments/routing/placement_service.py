"""The shared placement table as a service: one small Ray actor per engine deployment,
and each router replica's client of it.

What it decides and why it exists: :mod:`deployments.routing.placement_table` (the pure
logic) and :mod:`deployments.routing.prefix_policy`.

Lifetime. The first router replica that needs the table creates the actor by name
(``get_if_exists``), so every router replica of the deployment finds the same one. It
is not detached: it dies with the router replica that created it, with the
application. A router that finds it gone creates it again (at most once every
``deployments.core.named_actor.RETRY_S``), and meanwhile places conversations by rendezvous hashing. Losing the
table loses only placements: conversations that go on are placed again, and their
next turns may miss the prefix cache once.

Nothing here blocks an event loop: the actor is created in a thread, a lookup is
awaited with a timeout (asked for by the ingress before the handle call, never inside
Serve's routing step: deployments/routing/replica_chooser.py says why), and placements
the table did not make (spills, and rendezvous placements while it was slow or not yet
reachable) are sent in the background, never awaited by a request. The client lives on
Serve's routing loop, like the request router that owns it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

from deployments.core.named_actor import NamedActor
from deployments.routing.placement_table import PlacementTable

logger = logging.getLogger("ray.serve")

_MAX_PENDING_MOVES = 10_000
"""Placements kept for the table while it cannot be reached (the newest)."""
_MIN_FLUSH_TIMEOUT_S = 1.0
"""Least time a batch of placements may take to reach the table (a lookup's timeout is
far shorter; a batch is not on any request's path)."""
LOOKUP_RESULTS = ("hit", "placed", "timeout", "unavailable")
"""Outcomes of a router's lookup in the table, as ``/metrics`` labels them."""


class PlacementTableActor:
    """The actor: a :class:`~deployments.routing.placement_table.PlacementTable` behind async methods
    (one event loop, so calls never interleave inside the table)."""

    def __init__(self, max_entries: int, memory_s: float, adapter_slots: int = 1, load_gap: float = 8,
                 load_factor: float = 1.5) -> None:
        self._table = PlacementTable(max_entries, memory_s, adapter_slots=adapter_slots, load_gap=load_gap,
                                     load_factor=load_factor)

    async def resolve(self, key: int | None, loads: Mapping[str, int], adapter: str | None = None) -> tuple[str, bool]:
        """:meth:`PlacementTable.resolve`."""
        return self._table.resolve(key, loads, adapter)

    async def assign(self, moves: list[tuple[int | None, str, str | None]]) -> None:
        """For each (key, replica, adapter): :meth:`PlacementTable.assign` of the key, and
        :meth:`PlacementTable.touch_adapter` of the adapter, where given."""
        for key, replica, adapter in moves:
            if key is not None:
                self._table.assign(key, replica)
            if adapter is not None:
                self._table.touch_adapter(replica, adapter)

    async def size(self) -> int:
        return len(self._table)


def placement_table_name(app_name: str, deployment_name: str) -> str:
    """The actor's name: one table per engine deployment of an application."""
    return f"glm-serve-routing:{app_name}:{deployment_name}"


class PlacementClient:
    """One router replica's access to the table. ``counts`` has each lookup's outcome
    (``hit``, ``placed``, ``timeout``, ``unavailable``) for ``/metrics``."""

    def __init__(self, name: str, max_entries: int, timeout_s: float, memory_s: float = 60.0,
                 adapter_slots: int = 1, load_gap: float = 8, load_factor: float = 1.5) -> None:
        self.name = name
        self.max_entries = max_entries
        self.memory_s = memory_s
        self.timeout_s = timeout_s
        self.counts: dict[str, int] = dict.fromkeys(LOOKUP_RESULTS, 0)
        self._link = NamedActor(name, PlacementTableActor, (max_entries, memory_s, adapter_slots, load_gap, load_factor),
                                "size", "placement table", "placing by rendezvous", logger, on_ready=self._flush_soon)
        # Placements the table did not make, waiting to be sent (also while it is unreachable).
        self._moves: deque[tuple[int | None, str, str | None]] = deque(maxlen=_MAX_PENDING_MOVES)
        self._flushing: asyncio.Task | None = None

    @property
    def available(self) -> bool:
        return self._actor is not None

    @property
    def _actor(self) -> Any:
        return self._link.handle

    async def resolve(self, key: int | None, loads: Mapping[str, int],
                      adapter: str | None = None) -> tuple[str, bool] | None:
        """Where conversation ``key`` lives (placing it if new; where ``adapter`` is loaded,
        if any), or None if the table cannot answer within ``timeout_s``."""
        if self._actor is None:
            self._link.connect_soon()
            self.counts["unavailable"] += 1
            return None
        try:
            replica, placed = await asyncio.wait_for(self._actor.resolve.remote(key, dict(loads), adapter), self.timeout_s)
        except asyncio.TimeoutError:
            self.counts["timeout"] += 1
            return None
        except Exception as exc:  # the actor died (its creator left) or cannot be reached
            self._link.lost(exc)
            self.counts["unavailable"] += 1
            return None
        self.counts["placed" if placed else "hit"] += 1
        return replica, placed

    def assign(self, key: int | None, replica: str, adapter: str | None = None) -> None:
        """Tell the table that conversation ``key`` lives on ``replica`` (a placement it did
        not make: a spill, or rendezvous while it was slow or unreachable), and that
        ``replica`` served ``adapter``. Sent in the background; kept until the table is
        reachable (the newest ``_MAX_PENDING_MOVES``)."""
        move = (key, replica, adapter)
        if key is None and self._moves and self._moves[-1] == move:
            return  # the same adapter on the same replica, already on its way
        self._moves.append(move)
        self._flush_soon()

    def _flush_soon(self) -> None:
        if self._actor is None or not self._moves or (self._flushing is not None and not self._flushing.done()):
            return
        try:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())
        except RuntimeError:  # called off the routing loop: the next move on it sends this one
            pass

    async def _flush(self) -> None:
        while self._moves and self._actor is not None:
            moves = list(self._moves)
            self._moves.clear()
            try:
                await asyncio.wait_for(self._actor.assign.remote(moves), max(_MIN_FLUSH_TIMEOUT_S, self.timeout_s))
            except Exception as exc:
                self._moves.extendleft(reversed(moves))
                self._link.lost(exc)

    def start(self) -> None:
        """Begin connecting (on the running loop) so the first request finds the table."""
        self._link.connect_soon()
