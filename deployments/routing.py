"""Cache-aware routing: which engine replica should serve a request.

vLLM keeps the KV blocks of prompts it has computed (its prefix cache), per engine
replica. A chat's next turn repeats the whole conversation so far, so sending it to
the replica that served the previous turn skips recomputing that prefix. This module
is the pure policy (no Ray); :mod:`deployments.request_router` plugs it into Serve.

Keys
----
A request's prefix is a sequence of *blocks*, hashed cumulatively (``hashes[i]`` is
the hash of blocks ``0..i``), so "does anybody hold my first i blocks?" is one dict
lookup, not a walk over text:

* chat: one block per message, made of its role, its content and any other non-null
  field (tool calls, tool_call_id, name), so the same text under another role is a
  different prefix; a first block for ``tools`` when the request has any (GLM-4
  renders them into the prompt's head).
* completion string prompt: fixed chunks of ``chars_per_block`` characters.
* completion token ids: fixed chunks of ``tokens_per_block`` ids.

The hash is BLAKE2b (8 bytes), not Python's ``hash()``, which is salted per process:
keys must be equal in every router replica (see *Agreement*), and a test run is
reproducible.

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
engine deployment, held by a small Ray actor (:mod:`deployments.routing_directory`), maps a
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
spreads conversations only as evenly as chance does, and with a few dozen
conversations per replica one replica got 17 of 24 new conversations while the
other had 7 (docs/routing.md). A placement that looks at load cannot be recomputed
by another router later, so it has to be remembered where every router can read it.
The cost is one remote call (about a millisecond) per new conversation and per
first turn a router sees of a conversation, never per request of a conversation it
already routes. It is made by the router deployment before the request enters Serve's
handle, never inside Serve's routing step (deployments/request_router.py says why), and
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
seen (placed now).
"""

from __future__ import annotations

import json
import math
import random
import struct
import time
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ROUTER_CLASSES = {
    "pow2": "deployments.request_router.PowerOfTwoRouter",
    "prefix": "deployments.request_router.PrefixAffinityRouter",
}
LABELS = ("affinity", "spilled", "new", "hint")

_MESSAGE_BASE = ("role", "content")


class RoutingConfig(BaseModel):
    """How requests pick an engine replica.

    Defined here rather than in :mod:`deployments.config` (whose ``StrictModel`` it
    mirrors: unknown fields are errors) so that ``config.py`` can import it without an
    import cycle."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: Literal["pow2", "prefix"] = Field(
        default="pow2",
        description=(
            "'pow2': Serve's default power-of-two-choices router (load only). 'prefix': send a "
            "conversation's next turn to the engine replica that holds its prefix in vLLM's prefix "
            "cache (deployments/routing.py)."
        ),
    )
    max_entries: int = Field(
        default=100_000, ge=16, le=10_000_000,
        description="Most prefix records one router replica keeps (LRU); about 250 bytes each (24 MB at 100k).",
    )
    chars_per_block: int = Field(
        default=256, ge=16, le=65_536,
        description="Characters per block of a completion string prompt.",
    )
    tokens_per_block: int = Field(
        default=64, ge=4, le=16_384,
        description="Token ids per block of a completion token-id prompt.",
    )
    min_match_blocks: int = Field(
        default=1, ge=1, le=4096,
        description="Fewest blocks a prefix needs to identify a conversation (chat: messages, the first user "
                    "message is always required; completions: chunks).",
    )
    shared_fanout: int = Field(
        default=4, ge=1, le=64,
        description="A prefix that more than this many conversations went through is shared (a common opener, "
                    "a few-shot head) and no longer pins conversations to a replica.",
    )
    max_load_gap: int = Field(
        default=8, ge=0,
        description="The preferred replica is skipped only when its ongoing requests exceed the least-loaded "
                    "replica's by more than this many and by more than max_load_factor times.",
    )
    max_load_factor: float = Field(
        default=1.5, ge=1.0,
        description="The relative half of the load guard (see max_load_gap): with 100 ongoing on the least-loaded "
                    "replica, the preferred one is skipped above 150, not at 109.",
    )
    replicas_per_entry: int = Field(
        default=2, ge=1, le=8,
        description="Replicas remembered per prefix (most recent first); the others are spill targets.",
    )
    max_age_s: float | None = Field(
        default=None, gt=0,
        description="Ignore a record older than this (vLLM has probably evicted it). None: no age limit.",
    )
    directory: bool = Field(
        default=True,
        description="Share where each conversation lives between router replicas through one small Ray actor per "
                    "engine deployment, which places a new conversation on the least-loaded replica (ongoing requests "
                    "plus conversations placed lately). False: "
                    "each router places it by rendezvous hashing of its prefix, with no shared state.",
    )
    placement_memory_s: float = Field(
        default=60.0, gt=0, le=86_400,
        description="The shared placement table counts each conversation it gave a replica as load to come, "
                    "with weight exp(-age / placement_memory_s), on top of the replica's ongoing requests.",
    )
    directory_timeout_s: float = Field(
        default=0.1, gt=0, le=10,
        description="How long a router waits for the shared placement table before placing the conversation "
                    "by rendezvous hashing instead.",
    )
    stats_period_s: float = Field(
        default=10.0, gt=0, le=3600,
        description="How often Serve's controller collects each engine replica's vLLM statistics (load, KV cache, "
                    "prefix-cache hits) for the routers' /metrics. Each collection is one small call per replica.",
    )

    def policy_kwargs(self) -> dict[str, Any]:
        """``request_router_kwargs`` of the prefix policy: its own fields (all JSON values)."""
        return self.model_dump(exclude={"policy", "stats_period_s"})


def request_router_config(cfg: RoutingConfig) -> dict[str, Any]:
    """What ``Deployment.options(request_router_config=...)`` needs for ``cfg``.
    (``DeploymentConfig`` validates on assignment, so the dict becomes a
    ``RequestRouterConfig``.) Both policies get a router class of glm-serve's, so that
    ``/metrics`` can read the engine statistics Serve hands to request routers."""
    kwargs = cfg.policy_kwargs() if cfg.policy == "prefix" else {}
    return {"request_router_class": ROUTER_CLASSES[cfg.policy], "request_router_kwargs": kwargs,
            "request_routing_stats_period_s": cfg.stats_period_s}


# --- keys ------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class PrefixKeys:
    """A request's prefix as cumulative block hashes."""

    hashes: tuple[int, ...]
    """``hashes[i]``: the hash of the request's blocks ``0..i``."""
    anchors: tuple[int, ...]
    """Block indices (ascending) at which a prefix may identify a conversation."""
    partial_tail: bool = False
    """The last block is a partial fixed-size chunk (a longer prompt will not repeat it)."""


_EMPTY = PrefixKeys((), ())


def _digest(h: Any) -> int:
    return int.from_bytes(h.copy().digest(), "little")


def _text(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if value is None:
        return b""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass")


def _field(h: Any, data: bytes) -> None:
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def stable_hash(kind: bytes, value: str) -> int:
    """A 64-bit hash of ``value`` that is the same in every process."""
    h = blake2b(digest_size=8, person=kind[:16])
    h.update(value.encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest(), "little")


_LENGTHS = struct.Struct("<III")


def _chat_keys(messages: Sequence[Any], tools: Any, min_blocks: int) -> PrefixKeys:
    h = blake2b(digest_size=8, person=b"glm-chat")
    hashes: list[int] = []
    anchors: list[int] = []
    if tools:
        _field(h, b"\x00tools")
        _field(h, _text(tools))
        hashes.append(_digest(h))
    for message in messages:
        if isinstance(message, Mapping):
            role = message.get("role")
            content = message.get("content")
            extra = {k: v for k, v in message.items() if v is not None and k not in _MESSAGE_BASE}
        else:
            role, content, extra = None, message, None
        role_text = role if isinstance(role, str) else str(role)
        role_bytes = role_text.encode("utf-8", "surrogatepass")
        content_bytes = _text(content)
        extra_bytes = _text(extra) if extra else b""
        # One update per message; the lengths make the boundaries unambiguous.
        h.update(b"".join((_LENGTHS.pack(len(role_bytes), len(content_bytes), len(extra_bytes)),
                           role_bytes, content_bytes, extra_bytes)))
        index = len(hashes)
        hashes.append(int.from_bytes(h.copy().digest(), "little"))
        if role_text == "user" and index + 1 >= min_blocks:
            anchors.append(index)
    return PrefixKeys(tuple(hashes), tuple(anchors))


def _chunk_keys(prompt: str | Sequence[int], size: int, min_blocks: int) -> PrefixKeys:
    if isinstance(prompt, str):
        h = blake2b(digest_size=8, person=b"glm-text")

        def encode(chunk: Any) -> bytes:
            return chunk.encode("utf-8", "surrogatepass")
    else:
        h = blake2b(digest_size=8, person=b"glm-ids")

        def encode(chunk: Any) -> bytes:
            try:
                return array("q", chunk).tobytes()
            except (TypeError, OverflowError):
                return repr(list(chunk)).encode()
    hashes = []
    for start in range(0, len(prompt), size):
        h.update(encode(prompt[start:start + size]))
        hashes.append(_digest(h))
    partial = len(prompt) % size != 0
    whole = len(hashes) - 1 if partial else len(hashes)
    return PrefixKeys(tuple(hashes), tuple(range(min_blocks - 1, whole)), partial)


def prefix_keys(request: Any, cfg: RoutingConfig) -> PrefixKeys:
    """The prefix keys of a :class:`~deployments.generation.GenerationRequest` (or any
    object with ``messages`` / ``prompt`` / ``tools``)."""
    messages = getattr(request, "messages", None)
    if messages is not None:
        return _chat_keys(messages, getattr(request, "tools", None), cfg.min_match_blocks)
    prompt = getattr(request, "prompt", None)
    if isinstance(prompt, str):
        return _chunk_keys(prompt, cfg.chars_per_block, cfg.min_match_blocks)
    if isinstance(prompt, Sequence) and prompt:
        return _chunk_keys(prompt, cfg.tokens_per_block, cfg.min_match_blocks)
    return _EMPTY


def rendezvous(key: int, replicas: Mapping[str, Any] | Sequence[str], seeds: dict[str, int]) -> str:
    """Highest-random-weight choice of ``key`` among ``replicas``: the same in every
    process for the same key and replica set. The weight of a replica is splitmix64's
    finalizer of ``key ^ seed(replica)``, inlined (this loop runs per replica);
    ``seeds`` caches each replica's seed."""
    best, best_weight = "", -1
    for replica in replicas:
        seed = seeds.get(replica)
        if seed is None:
            seed = seeds[replica] = stable_hash(b"glm-replica", replica)
        x = key ^ seed
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
        if x > best_weight:
            best, best_weight = replica, x
    return best


# --- the shared placement table ----------------------------------------------------------


class PlacementTable:
    """Where each conversation lives, shared by every router replica of one engine
    deployment (held by :class:`deployments.routing_directory.RoutingDirectory`).

    Keys are conversation keys (:attr:`Decision.key`); at most ``max_entries`` of them
    are kept, least recently used first out.

    A new conversation goes to the replica with the least *expected* load: its ongoing
    requests (as the asking router sees them) plus the conversations it was given lately,
    each weighing exp(-age / ``memory_s``). A conversation placed a moment ago is load to
    come (its next turns are pinned there) and, within a burst, is not in the routers'
    load yet: by current load alone a burst of new conversations that all saw one replica
    a request lighter went to that replica, every one of them (the e2e suite saw 8 of 8).
    Decayed, conversations that ended long ago (before a replica was replaced, say) do not
    send every new one to the newcomer."""

    def __init__(self, max_entries: int = 100_000, memory_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.memory_s = memory_s
        self._clock = clock
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

    def resolve(self, key: int, loads: Mapping[str, int]) -> tuple[str, bool]:
        """The replica of conversation ``key`` among the live replicas in ``loads``, and
        whether it was placed just now: a key the table does not have, or whose replica
        left, goes to the replica of least ongoing plus recent load (the class docstring),
        ties to the rendezvous choice."""
        if not loads:
            raise ValueError("no replica to choose from")
        home = self._homes.get(key)
        if home is not None and home in loads:
            self._homes.move_to_end(key)
            return home, False
        now = self._clock()
        expected = {replica: load + self.recent(replica, now) for replica, load in loads.items()}
        least = min(expected.values())
        # Within a hair of the least: decayed counts are floats, and a tie must be a tie.
        best = [replica for replica, value in expected.items() if value - least < 1e-6]
        target = best[0] if len(best) == 1 else rendezvous(key, best, self._seeds)
        self.assign(key, target)
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


# --- policy ----------------------------------------------------------------------------


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
class Decision:
    """Where one request goes, and why."""

    replica: str
    label: str
    """One of :data:`LABELS`."""
    matched_blocks: int
    """Blocks of the request's prefix the chosen replica is known to hold (0: none learned)."""
    anchor_blocks: int
    """Length of the request's specific prefix in blocks (0: none)."""
    keys: PrefixKeys
    key: int | None = None
    """The conversation's key in the shared placement table (session or anchor hash)."""
    publish: bool = False
    """The shared placement table did not choose this replica for the conversation (it was
    spilled, or placed by rendezvous without the table): the table should learn it."""


_POLICIES: weakref.WeakSet[PrefixPolicy] = weakref.WeakSet()


def process_decision_counts() -> dict[str, int]:
    """Decisions of every policy in this process, by label (for a /metrics page)."""
    totals = dict.fromkeys(LABELS, 0)
    for policy in list(_POLICIES):
        for label, count in policy.counts.items():
            totals[label] = totals.get(label, 0) + count
    return totals


class PrefixPolicy:
    """The routing state of one router replica: choose a replica, record where a
    request went. Not thread-safe (Serve calls a request router on one event loop).

    ``choose`` has no side effects (Serve may call it several times for one request
    while replicas refuse it); ``record`` learns from the request that was sent.
    """

    def __init__(self, config: RoutingConfig | None = None, *, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or RoutingConfig(policy="prefix")
        self._table: OrderedDict[int, _Entry] = OrderedDict()
        self._seeds: dict[str, int] = {}
        self._rng = rng or random.Random()
        self._clock = clock
        self.counts: dict[str, int] = dict.fromkeys(LABELS, 0)
        _POLICIES.add(self)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> PrefixPolicy:
        """A policy from ``request_router_kwargs`` (the fields of :class:`RoutingConfig`)."""
        kwargs.pop("policy", None)
        return cls(RoutingConfig(policy="prefix", **kwargs))

    def __len__(self) -> int:
        return len(self._table)

    def keys(self, request: Any) -> PrefixKeys:
        return prefix_keys(request, self.config)

    # -- choosing ---------------------------------------------------------------------

    def choose(self, request: Any, loads: Mapping[str, int], keys: PrefixKeys | None = None,
               placed: tuple[str, bool] | None = None) -> Decision:
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
        gap, factor = cfg.max_load_gap, cfg.max_load_factor

        def overloaded(replica: str) -> bool:
            load = loads[replica]
            return load - least > gap and load > factor * least

        anchor = self._anchor(keys)
        anchor_blocks = 0 if anchor is None else anchor + 1
        spilled = False
        if anchor is not None:
            # Learned: the deepest prefix (at least the anchor) a live replica served.
            for i, replica in self._holders(keys, anchor, loads):
                if overloaded(replica):
                    spilled = True
                    continue
                return Decision(replica, "spilled" if spilled else "affinity", i + 1, anchor_blocks, keys)

        key, label = self._conversation_key(request, keys, anchor)
        if key is not None:
            confirmed = placed is not None and placed[0] in loads
            if confirmed:
                target = placed[0]
                if label != "hint":
                    label = "new" if placed[1] else "affinity"
            else:
                target = self.rendezvous(key, loads)
            if not overloaded(target):
                return Decision(target, "spilled" if spilled else label, 0, anchor_blocks, keys, key,
                                publish=spilled or not confirmed)
            spilled = spilled or label != "new"
        return Decision(self._least_loaded(loads, least), "spilled" if spilled else "new", 0, anchor_blocks, keys,
                        key, publish=spilled and key is not None)

    def placement_key(self, request: Any, loads: Mapping[str, int], keys: PrefixKeys) -> int | None:
        """The key to ask the shared placement table about, or None when the table is not
        needed: the learned table already knows a live replica holding the request's
        specific prefix, or the request has no specific prefix and no session."""
        anchor = self._anchor(keys)
        if anchor is not None and next(self._holders(keys, anchor, loads), None) is not None:
            return None
        return self._conversation_key(request, keys, anchor)[0]

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
