"""The shared placement table: where each conversation lives, one per engine deployment.

Each router replica has its own policy instance and sees only the requests it routes,
while a client's turns land on router replicas at random. With ``routing.directory`` on
(the default), where a conversation lives is shared: one :class:`PlacementTable` per
engine deployment, held by a small Ray actor (:mod:`deployments.routing.placement_service`),
maps a conversation's key (its anchor hash, or the request's ``session_id``) to its
replica, and answers every router the same for the same key until that replica leaves.

Why a table and not a pure function of the key: rendezvous hashing (every router computes
the same replica from the key alone) spreads conversations only as evenly as chance does,
which over a few dozen conversations per replica is unevenly enough to cost throughput
(docs/measurements.md#routing). A placement that looks at load cannot be
recomputed by another router later, so it has to be remembered where every router can
read it.

The table also knows which LoRA adapters each replica holds: the last ``adapter_slots``
(``model.lora.max_cpu_loras``) it saw go there, as vLLM keeps the last ones used. A
request for an adapter goes to a replica that holds it, the one of least expected load
among them, unless the load guard (``routing.max_load_gap`` and ``max_load_factor``, the
same guard as prefix affinity's) finds each of them too busy: then it is placed as any
new conversation, on the replica of least expected load, which loads the adapter too, so
a hot adapter spreads. Residency is a preference within the guard, not a cost added to
the load: a cost in requests was outweighed by the placed-lately term whenever
conversations are single requests, and the adapter spread everywhere
(docs/measurements.md#lora). Pure logic: no Ray.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from deployments.config.routing import overloaded
from deployments.routing.prefix_keys import rendezvous, stable_hash


class PlacementTable:
    """Where each conversation lives, shared by every router replica of one engine
    deployment (held by :class:`deployments.routing.placement_service.PlacementTableActor`).

    Keys are conversation keys (:attr:`Decision.key`); at most ``max_entries`` of them
    are kept, least recently used first out.

    A new conversation goes to the replica with the least *expected* load: its ongoing
    requests (as the asking router sees them) plus the conversations it was given lately,
    each weighing exp(-age / ``memory_s``). A conversation placed a moment ago is load to
    come (its next turns are pinned there) and, within a burst, is not in the routers'
    load yet: by current load alone, a burst of new conversations that all see one replica
    a request lighter would all go to that replica (docs/measurements.md#routing).
    Decayed, conversations that ended long ago (before a replica was replaced, say) do not
    send every new one to the newcomer."""

    def __init__(self, max_entries: int = 100_000, memory_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, adapter_slots: int = 1,
                 load_gap: float = 8, load_factor: float = 1.5) -> None:
        self.max_entries = max_entries
        self.memory_s = memory_s
        self.adapter_slots = adapter_slots
        self.load_gap, self.load_factor = load_gap, load_factor
        self._clock = clock
        self._adapters: dict[str, OrderedDict[str, None]] = {}  # replica -> its adapters, least recent first
        self._homes: OrderedDict[int, str] = OrderedDict()
        self._held: dict[str, int] = {}
        self._recent: dict[str, tuple[float, float]] = {}  # replica -> (decayed count, when)
        self._seeds: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._homes)

    def held(self, replica: str) -> int:
        """Conversations the table places on ``replica``."""
        return self._held.get(replica, 0)

    def recent(self, replica: str, now: float | None = None) -> float:
        """Conversations given to ``replica`` lately, each weighing exp(-age / memory_s)."""
        count, when = self._recent.get(replica, (0.0, 0.0))
        if not count:
            return 0.0
        now = self._clock() if now is None else now
        return count * math.exp(-max(0.0, now - when) / self.memory_s)

    def has_adapter(self, replica: str, adapter: str) -> bool:
        """Whether ``replica`` holds ``adapter``, as far as the table knows."""
        return adapter in self._adapters.get(replica, ())

    def touch_adapter(self, replica: str, adapter: str) -> None:
        """``replica`` served ``adapter`` just now (it loaded it, or used it again)."""
        held = self._adapters.setdefault(replica, OrderedDict())
        held[adapter] = None
        held.move_to_end(adapter)
        while len(held) > self.adapter_slots:
            held.popitem(last=False)

    def resolve(self, key: int | None, loads: Mapping[str, int], adapter: str | None = None) -> tuple[str, bool]:
        """The replica of conversation ``key`` among the live replicas in ``loads``, and
        whether it was placed just now: a key the table does not have, or whose replica
        left, goes to the replica of least ongoing plus recent load (the class docstring),
        among those holding ``adapter`` that the load guard lets through if there are any,
        ties to the rendezvous choice. ``key`` None (an adapter request that is no
        conversation): chosen the same way, and not remembered but for the adapter."""
        if not loads:
            raise ValueError("no replica to choose from")
        home = self._homes.get(key) if key is not None else None
        if home is not None and home in loads:
            self._homes.move_to_end(key)
            if adapter is not None:
                self.touch_adapter(home, adapter)
            return home, False
        candidates = loads
        if adapter is not None:
            for gone in [r for r in self._adapters if r not in loads]:
                del self._adapters[gone]
            least_load = min(loads.values())
            holders = {r: load for r, load in loads.items() if self.has_adapter(r, adapter)
                       and not overloaded(load, least_load, self.load_gap, self.load_factor)}
            candidates = holders or loads
        now = self._clock()
        expected = {replica: load + self.recent(replica, now) for replica, load in candidates.items()}
        least = min(expected.values())
        # Within a hair of the least: decayed counts are floats, and a tie must be a tie.
        best = [replica for replica, value in expected.items() if value - least < 1e-6]
        tie_key = key if key is not None else stable_hash(b"glm-adapter", adapter or "")
        target = best[0] if len(best) == 1 else rendezvous(tie_key, best, self._seeds)
        if key is not None:
            self.assign(key, target)
        if adapter is not None:
            self.touch_adapter(target, adapter)
        return target, True

    def assign(self, key: int, replica: str) -> None:
        """Conversation ``key`` lives on ``replica`` from now on."""
        old = self._homes.pop(key, None)
        if old is not None:
            self._release(old)
        self._homes[key] = replica
        self._held[replica] = self._held.get(replica, 0) + 1
        now = self._clock()
        self._recent[replica] = (self.recent(replica, now) + 1.0, now)
        while len(self._homes) > self.max_entries:
            _, evicted = self._homes.popitem(last=False)
            self._release(evicted)

    def _release(self, replica: str) -> None:
        count = self._held.get(replica, 0) - 1
        if count > 0:
            self._held[replica] = count
        else:
            self._held.pop(replica, None)
            self._recent.pop(replica, None)
            self._seeds.pop(replica, None)
