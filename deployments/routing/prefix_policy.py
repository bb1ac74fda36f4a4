"""Cache-aware routing: which engine replica should serve a request.

vLLM keeps the KV blocks of prompts it has computed (its prefix cache), per engine
replica. A chat's next turn repeats the whole conversation so far, so sending it to
the replica that served the previous turn skips recomputing that prefix. This module
is the pure policy (no Ray), ``routing.policy: prefix``; a request's prefix keys come
from :mod:`deployments.routing.prefix_keys`, the shared placement table is
:mod:`deployments.routing.placement_table`, and
:class:`~deployments.routing.replica_chooser.PolicyReplicaChooser` runs it inside Serve.

Specific prefixes (why a shared system prompt does not pin traffic)
-------------------------------------------------------------------
Only a prefix that identifies one conversation may attract traffic. The rule:

* *anchor candidates* are the prefixes that end at a user message (chat) or at a
  whole chunk (completions), at least ``min_match_blocks`` blocks long. A system
  prompt alone is never one;
* the table counts the conversations through each candidate it has seen, as a trie
  over the candidates: a request that extends the deepest known candidate where it
  was a leaf is the same conversation going on (next turn); one that branches off an
  inner candidate (or starts unseen) is another conversation, and adds one to every
  known candidate above it (counts saturate at ``shared_fanout + 1``). A prefix with
  more than ``shared_fanout`` conversations is *shared*: a popular opener ("hi" behind
  the same system prompt, even with the same deterministic reply) or a few-shot head
  many completion prompts start with, however many chunks long;
* a request's *anchor* is its shortest candidate that is not shared: its first user
  message normally, a later one behind a popular opener;
* a learned match (below) counts only if it covers the anchor. A request with no
  anchor (empty, system-only, shorter than one whole chunk, or nothing but shared
  prefixes) has no affinity: it goes to the least-loaded replica.

Agreement across router replicas: rendezvous, or a shared placement table
--------------------------------------------------------------------------
Each router replica has its own policy instance and sees only the requests it
routes, while a client's turns land on router replicas at random. With ``directory``
on (the default), where a conversation lives is shared: one :class:`PlacementTable` per
engine deployment, held by a small Ray actor (:mod:`deployments.routing.placement_service`), maps a
conversation's key (its anchor hash, or the request's ``session_id``) to its replica.
A router asks it only when its own learned table (below) has no match for the
request: a new conversation, or a turn whose earlier turns another router replica
routed. The table places a new conversation on the replica of least expected load
(its ongoing requests plus the conversations it was given lately, decaying with
``placement_memory_s``: :class:`PlacementTable` says why), ties by rendezvous hashing of
the key, and
answers every router the same for the same key until that replica leaves.

Why a shared table and not a pure function of the key: rendezvous hashing (every
router computes the same replica from the key alone, which this module did first)
spreads conversations only as evenly as chance does, which over a few dozen
conversations per replica is unevenly enough to cost throughput
(docs/measurements.md#routing). A placement that looks at load cannot be recomputed
by another router later, so it has to be remembered where every router can read it.
The cost is one Ray actor call per new conversation and per
first turn a router sees of a conversation, never per request of a conversation it
already routes. It is made by the router deployment before the request enters Serve's
handle, never inside Serve's routing step (deployments/routing/replica_chooser.py says why), and
is bounded: past ``directory_timeout_s``, or while the actor is down, the router falls
back to rendezvous hashing, which every router still agrees on, and tells the table
where it put the conversation.

The learned table refines this. Per prefix hash it keeps the replica(s) that most
recently served that exact prefix, and when (LRU, at most ``max_entries`` entries,
the anchor candidates' conversation counts included). A match that covers the anchor,
on a live replica, wins: it is where the cache is. A conversation spilled by the
load guard moves, and the router that moved it updates the shared table; a router
that routed its earlier turns keeps sending it where those turns are cached (still
subject to the load guard) until it routes a later turn of it elsewhere.

Load guard
----------
Per request, never a global switch: the preferred replica is skipped when its load
(ongoing requests, as the router sees them) exceeds the least-loaded candidate's by
more than ``max_load_gap`` AND by more than ``max_load_factor`` times. Then the
next-best holder of the prefix, then the rendezvous target, then the least-loaded
replica is taken.

Decision labels (for metrics)
-----------------------------
``affinity``: the chosen replica holds (learned) or is expected to hold (rendezvous
of a conversation with history) the request's specific prefix. ``hint``: placed by
the request's session id. ``spilled``: the affine or hinted replica was overloaded
(or refused the request), so another one was taken. ``new``: no useful prefix (a new
conversation, a shared or empty prompt), or a conversation the shared table had not
seen (placed now). ``adapter``: a LoRA request with no conversation to follow, placed
where its adapter is loaded.

LoRA adapters
-------------
One decision weighs both caches. A request's prefix keys are salted with its adapter
(vLLM caches a prompt per adapter), so a learned match is a replica that served this
adapter *and* this prefix: it wins, as above. A new conversation, or an adapter request
with no conversation (no anchor, no session), is placed by the shared table on a replica
that holds its adapter, unless the load guard (below) says every holder is too busy: then
on the replica of least expected load, which loads it too, so a hot adapter spreads
(:class:`~deployments.routing.placement_table.PlacementTable`). Every router
tells the table where it sent each adapter request, so the table's view of what each
replica holds follows what vLLM holds. Without the table (off, slow, down), an adapter
request with no conversation goes where rendezvous hashing of the adapter's name says:
every router agrees, so the adapter is loaded once.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deployments.config.routing import RoutingConfig
from deployments.routing.policy import Decision, RoutingPolicy
from deployments.routing.prefix_keys import EMPTY, PrefixKeys, prefix_keys, rendezvous, stable_hash

LABELS = ("affinity", "spilled", "new", "hint", "adapter")


class _Entry:
    """What the table knows about one prefix."""

    __slots__ = ("replicas", "stamp", "conversations", "has_child")

    def __init__(self) -> None:
        self.replicas: tuple[str, ...] = ()
        """Replicas that served exactly this prefix, most recent first."""
        self.stamp = 0.0
        """When it was last served (the policy's clock)."""
        self.conversations = 0
        """Anchor candidates: conversations seen through it (at most shared_fanout + 1); 0: not a candidate."""
        self.has_child = False
        """Anchor candidates: a deeper candidate of some request continues it."""


@dataclass(slots=True)
class PrefixDecision(Decision):
    """Where one request goes, and why (``label``: one of :data:`LABELS`)."""

    matched_blocks: int = 0
    """Blocks of the request's prefix the chosen replica is known to hold (0: none learned)."""
    anchor_blocks: int = 0
    """Length of the request's specific prefix in blocks (0: none)."""
    keys: PrefixKeys = EMPTY
    key: int | None = None
    """The conversation's key in the shared placement table (session or anchor hash)."""
    publish: bool = False
    """The shared placement table did not choose this replica for the conversation (it was
    spilled, or placed by rendezvous without the table): the table should learn it."""


class PrefixPolicy(RoutingPolicy):
    """The routing state of one router replica: choose a replica, record where a
    request went. Not thread-safe (Serve calls a request router on one event loop).

    ``choose`` has no side effects (Serve may call it several times for one request
    while replicas refuse it); ``record`` learns from the request that was sent.
    """

    name = "prefix"
    labels = LABELS
    uses_placement_table = True

    def __init__(self, config: RoutingConfig | None = None, *, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(config or RoutingConfig(policy="prefix"))
        self._table: OrderedDict[int, _Entry] = OrderedDict()
        self._seeds: dict[str, int] = {}
        self._rng = rng or random.Random()
        self._clock = clock

    def __len__(self) -> int:
        return len(self._table)

    def keys(self, request: Any) -> PrefixKeys:
        cfg = self.config
        return prefix_keys(request, cfg.chars_per_block, cfg.tokens_per_block, cfg.min_match_blocks)

    # -- choosing ---------------------------------------------------------------------

    def choose(self, request: Any, loads: Mapping[str, int], keys: PrefixKeys | None = None,
               placed: tuple[str, bool] | None = None) -> PrefixDecision:
        """The replica for ``request`` among the live replicas ``loads`` names (replica id
        to ongoing requests). ``placed``: what the shared placement table answered for
        :meth:`placement_key` (the replica, and whether it placed the conversation just
        now); without it a conversation the learned table does not know is placed by
        rendezvous hashing."""
        if not loads:
            raise ValueError("no replica to choose from")
        if keys is None:
            keys = self.keys(request)
        cfg = self.config
        least = min(loads.values())

        def overloaded(replica: str) -> bool:
            return cfg.overloaded(loads[replica], least)

        anchor = self._anchor(keys)
        anchor_blocks = 0 if anchor is None else anchor + 1
        spilled = False
        if anchor is not None:
            # Learned: the deepest prefix (at least the anchor) a live replica served.
            for i, replica in self._holders(keys, anchor, loads):
                if overloaded(replica):
                    spilled = True
                    continue
                return PrefixDecision(replica, "spilled" if spilled else "affinity", i + 1, anchor_blocks, keys)

        key, label = self._conversation_key(request, keys, anchor)
        adapter = getattr(request, "adapter", None)
        confirmed = placed is not None and placed[0] in loads
        if key is not None:
            if confirmed:
                target = placed[0]
                if label != "hint":
                    label = "new" if placed[1] else "affinity"
            else:
                target = self.rendezvous(key, loads)
            if not overloaded(target):
                return PrefixDecision(target, "spilled" if spilled else label, 0, anchor_blocks, keys, key,
                                publish=spilled or not confirmed)
            spilled = spilled or label != "new"
        elif adapter is not None:
            target = placed[0] if confirmed else self.rendezvous(stable_hash(b"glm-adapter", adapter), loads)
            if not overloaded(target):
                return PrefixDecision(target, "spilled" if spilled else "adapter", 0, anchor_blocks, keys)
        return PrefixDecision(self._least_loaded(loads, least), "spilled" if spilled else "new", 0, anchor_blocks, keys,
                        key, publish=spilled and key is not None)

    def placement_key(self, request: Any, loads: Mapping[str, int], keys: PrefixKeys | None = None) -> int | None:
        """The key to ask the shared placement table about, or None when the table is not
        needed: the learned table already knows a live replica holding the request's
        specific prefix, or the request has no specific prefix and no session."""
        query = self.placement_query(request, loads, keys)
        return None if query is None else query[0]

    def placement_query(self, request: Any, loads: Mapping[str, int],
                        keys: PrefixKeys | None = None) -> tuple[int | None, str | None] | None:
        """:meth:`placement_key`, with the request's adapter: an adapter request with no
        conversation key is still placed by the table (where its adapter is loaded)."""
        if keys is None:
            keys = self.keys(request)
        anchor = self._anchor(keys)
        if anchor is not None and next(self._holders(keys, anchor, loads), None) is not None:
            return None
        key = self._conversation_key(request, keys, anchor)[0]
        adapter = getattr(request, "adapter", None)
        return None if key is None and adapter is None else (key, adapter)

    def _holders(self, keys: PrefixKeys, anchor: int, loads: Mapping[str, int]):
        """(block index, replica) of every live replica that served a prefix of ``keys``
        covering the anchor, deepest prefix first, most recent replica first."""
        table = self._table
        max_age = self.config.max_age_s
        now = self._clock() if max_age else 0.0
        hashes = keys.hashes
        for i in range(len(hashes) - 1, anchor - 1, -1):
            entry = table.get(hashes[i])
            if entry is None or not entry.replicas or (max_age and now - entry.stamp > max_age):
                continue
            for replica in entry.replicas:
                if replica in loads:
                    yield i, replica

    @staticmethod
    def _conversation_key(request: Any, keys: PrefixKeys, anchor: int | None) -> tuple[int | None, str]:
        """The conversation's key (its session id's hash, else its anchor's) and the label
        a placement by it gets."""
        session = getattr(request, "session_id", None) if request is not None else None
        if session:
            return stable_hash(b"glm-session", str(session)), "hint"
        if anchor is not None:
            return keys.hashes[anchor], ("affinity" if anchor < len(keys.hashes) - 1 else "new")
        return None, "new"

    def _anchor(self, keys: PrefixKeys) -> int | None:
        """The block index of the request's specific prefix, if it has one."""
        limit = self.config.shared_fanout
        table = self._table
        for i in keys.anchors:
            entry = table.get(keys.hashes[i])
            if entry is None or entry.conversations <= limit:
                return i
        return None

    def rendezvous(self, key: int, replicas: Mapping[str, Any] | Sequence[str]) -> str:
        """Highest-random-weight choice of ``key`` among ``replicas`` (:func:`rendezvous`)."""
        return rendezvous(key, replicas, self._seeds)

    def _least_loaded(self, loads: Mapping[str, int], least: int) -> str:
        idle = [replica for replica, load in loads.items() if load == least]
        return idle[0] if len(idle) == 1 else self._rng.choice(idle)

    # -- learning ---------------------------------------------------------------------

    def routed(self, decision: Decision | None, request: Any, replica: str) -> int | None:
        """Learn where the request went (a replica other than the chosen one: it was
        spilled there); the conversation key to publish, when the table did not place it."""
        if isinstance(decision, PrefixDecision):
            moved = decision.replica != replica  # the chosen replica refused: Serve took another
            self.record(decision.keys, replica, "spilled" if moved else decision.label)
            return decision.key if decision.publish or moved else None
        if request is not None:
            self.record(self.keys(request), replica, "new")
        return None

    def record(self, keys: PrefixKeys, replica: str, label: str | None = None) -> None:
        """``replica`` was sent a request with these keys (``label``: the decision's)."""
        if label is not None:
            self.counts[label] = self.counts.get(label, 0) + 1
        hashes, anchors = keys.hashes, keys.anchors
        if not anchors:
            return
        if replica not in self._seeds:
            self.add_replica(replica)
        cfg = self.config
        table = self._table
        saturated = cfg.shared_fanout + 1

        # The trie of anchor candidates: is this a new conversation, or one going on?
        known = len(anchors) - 1
        while known >= 0 and hashes[anchors[known]] not in table:
            known -= 1
        if known < len(anchors) - 1:
            if known >= 0:
                parent = table[hashes[anchors[known]]]
                branches = parent.has_child
                parent.has_child = True
                if branches:
                    for j in range(known + 1):
                        entry = table.get(hashes[anchors[j]])
                        if entry is not None and entry.conversations < saturated:
                            entry.conversations += 1
            for j in range(known + 1, len(anchors)):
                entry = self._touch(hashes[anchors[j]])
                entry.conversations = max(entry.conversations, 1)
                entry.has_child = j < len(anchors) - 1
        for j in range(min(known, len(anchors) - 1), -1, -1):  # refresh, the shortest prefixes last
            key = hashes[anchors[j]]
            if key in table:
                table.move_to_end(key)

        # Where it was served: the whole prompt, and its last whole chunk.
        now = self._clock()
        n = len(hashes)
        for i in ((n - 1, n - 2) if keys.partial_tail else (n - 1,)):
            if i < anchors[0]:
                break
            entry = self._touch(hashes[i])
            entry.replicas = (replica,) + tuple(r for r in entry.replicas if r != replica)[: cfg.replicas_per_entry - 1]
            entry.stamp = now
        while len(table) > cfg.max_entries:
            table.popitem(last=False)

    def _touch(self, key: int) -> _Entry:
        table = self._table
        entry = table.get(key)
        if entry is None:
            entry = table[key] = _Entry()
        else:
            table.move_to_end(key)
        return entry

    # -- replicas ---------------------------------------------------------------------

    def add_replica(self, replica: str) -> None:
        if replica not in self._seeds:
            self._seeds[replica] = stable_hash(b"glm-replica", replica)

    def remove_replica(self, replica: str) -> None:
        """Forget ``replica``: it is no longer named by any record (one pass over the table)."""
        self._seeds.pop(replica, None)
        dead = []
        for key, entry in self._table.items():
            if replica in entry.replicas:
                entry.replicas = tuple(r for r in entry.replicas if r != replica)
                if not entry.replicas and not entry.conversations:
                    dead.append(key)
        for key in dead:
            del self._table[key]

    def set_replicas(self, replicas: Sequence[str] | set[str]) -> None:
        """Make the known replicas exactly ``replicas``."""
        live = set(replicas)
        for gone in [r for r in self._seeds if r not in live]:
            self.remove_replica(gone)
        for replica in live:
            self.add_replica(replica)

    def holders(self, keys: PrefixKeys) -> list[tuple[int, tuple[str, ...]]]:
        """(blocks, replicas) for every prefix of ``keys`` in the table, deepest first
        (for tests and debugging)."""
        found = []
        for i in range(len(keys.hashes) - 1, -1, -1):
            entry = self._table.get(keys.hashes[i])
            if entry is not None and entry.replicas:
                found.append((i + 1, entry.replicas))
        return found
