"""Multi-turn chat workloads for the routing benchmark, and their statistics.

Pure and seeded: the same arguments give the same users, texts and think times, so
every routing policy is measured on the same traffic. Three workloads:

* ``multi-turn``: each user has the shared system prompt, a long context of their own
  in the first turn, then short questions; every turn repeats the conversation so far.
* ``unique``: the same request sizes and timing, but every request is a new
  conversation with a system prompt of its own: no prefix is shared, anywhere.
* ``hot-system``: many users, one question each, behind one shared system prompt.

Users are closed loops that think like people: a user sends its next turn a seeded
random (exponential) think time after its previous answer ended.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.harness.stats import percentile

WORKLOADS = ("multi-turn", "unique", "hot-system")

WORDS = (
    "river harbor lantern orchard quarry meadow signal ledger copper violet granite thunder compass "
    "archive beacon canyon glacier harvest island journey kettle ladder marble needle ocean pepper "
    "quartz ribbon saddle timber umbrella valley walnut yellow zephyr anchor bridge candle desert "
    "engine falcon garden hollow ivory jungle kernel lemon mirror nickel oyster pillow rocket silver "
    "tunnel velvet window basket cactus dragon feather gravel helmet insect jacket kitten lobster "
    "magnet napkin olive parrot rabbit salmon tomato violin wagon yogurt zipper planet mountain "
    "station theory method account report policy figure sample market course energy season"
).split()
"""The words every text here is made of (``make bench-scale``'s users draw theirs from them too)."""

# A count of tokens -> that many tokens of text (the benchmark passes the model's tokenizer).
Sizer = Callable[[str, int], str]


@dataclass(slots=True)
class Turn:
    """One request of a user: wait ``think_s``, then send."""

    think_s: float
    user_text: str
    system: str | None = None
    """Only for users that do not carry a conversation: this request's own system prompt."""


@dataclass(slots=True)
class User:
    """A closed-loop user: its turns, one after another."""

    name: str
    turns: list[Turn]
    system: str | None = None
    """The system prompt of a conversation (``carry``)."""
    carry: bool = True
    """Each turn repeats the conversation so far (with the answers the server gave)."""


@dataclass(frozen=True, slots=True)
class Shape:
    """Sizes of the multi-turn workload, in tokens of the model's tokenizer."""

    users: int = 12
    turns: int = 4
    system_tokens: int = 512
    context_tokens: int = 1536
    question_tokens: int = 24
    answer_tokens: int = 16
    think_mean_s: float = 2.0
    hot_users: int = 24

    def conversation_tokens(self, template_tokens: int = 12) -> int:
        """About how long one user's conversation is after its last turn (system prompt
        included); ``template_tokens`` per message for the chat template's markers."""
        per_turn = self.question_tokens + self.answer_tokens + 2 * template_tokens
        return self.system_tokens + self.context_tokens + self.turns * per_turn

    def all_conversations_tokens(self, template_tokens: int = 12) -> int:
        """What a cache holding every conversation (the system prompt once) needs."""
        own = self.conversation_tokens(template_tokens) - self.system_tokens
        return self.system_tokens + self.users * own


def kv_blocks(shape: Shape, block_tokens: int = 128, share: float = 0.65) -> int:
    """KV-cache blocks per engine replica so that one replica cannot hold every conversation
    but two can: ``share`` of what all of them need, and never less than two conversations."""
    need = max(share * shape.all_conversations_tokens(), 2 * shape.conversation_tokens())
    return math.ceil(need / block_tokens)


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


def _text(rng: random.Random, tokens: int, sizer: Sizer, tag: str) -> str:
    # A unique tag first: two texts never share a first block by chance.
    return sizer(f"[{tag}] " + words(rng, tokens * 2), tokens)


def multi_turn(shape: Shape, sizer: Sizer, seed: int = 0) -> list[User]:
    """Users sharing one system prompt, each with their own long first turn."""
    rng = random.Random(seed)
    system = _text(rng, shape.system_tokens, sizer, "system")
    users = []
    for u in range(shape.users):
        turns = [Turn(rng.uniform(0, shape.think_mean_s), _text(rng, shape.context_tokens, sizer, f"user {u}"))]
        for t in range(1, shape.turns):
            turns.append(Turn(rng.expovariate(1 / shape.think_mean_s),
                              _text(rng, shape.question_tokens, sizer, f"q{t}")))
        users.append(User(f"user-{u}", turns, system=system))
    return users


def unique(shape: Shape, sizer: Sizer, seed: int = 0) -> list[User]:
    """The multi-turn workload's request sizes and think times, with no shared prefix."""
    template = multi_turn(shape, sizer, seed)
    rng = random.Random(seed + 1)
    per_turn = shape.question_tokens + shape.answer_tokens
    users = []
    for u, user in enumerate(template):
        turns = []
        for t, turn in enumerate(user.turns):
            size = shape.context_tokens + t * per_turn
            turns.append(Turn(turn.think_s, _text(rng, size, sizer, f"u{u} t{t}"),
                              system=_text(rng, shape.system_tokens, sizer, f"system u{u} t{t}")))
        users.append(User(user.name, turns, carry=False))
    return users


def hot_system(shape: Shape, sizer: Sizer, seed: int = 0) -> list[User]:
    """Many new conversations behind one system prompt: one question each."""
    rng = random.Random(seed + 2)
    system = _text(rng, shape.system_tokens, sizer, "system")
    spread_s = shape.think_mean_s * shape.turns
    return [User(f"user-{u}", [Turn(rng.uniform(0, spread_s), _text(rng, shape.question_tokens, sizer, f"hot {u}"))],
                 system=system)
            for u in range(shape.hot_users)]


def build(workload: str, shape: Shape, sizer: Sizer, seed: int = 0) -> list[User]:
    """The users of ``workload`` (one of :data:`WORKLOADS`)."""
    return {"multi-turn": multi_turn, "unique": unique, "hot-system": hot_system}[workload](shape, sizer, seed)


@dataclass(slots=True)
class TurnRecord:
    """One request as the client saw it."""

    user: str
    turn: int
    sent_s: float = 0.0
    """When it was sent, seconds after the workload started."""
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    replica: str | None = None
    error: str | None = None
    text: str = field(default="", repr=False)


def in_flight_gap(records: list[TurnRecord]) -> float | None:
    """How unevenly the replicas were loaded while requests ran: the time-averaged
    difference between the most and the least requests in flight on one replica, over the
    time any request was in flight. A replica's total share can be even while, turn by
    turn, one replica runs more at once (and the slowest user waits on it)."""
    replicas = sorted({r.replica for r in records if r.replica})
    if len(replicas) < 2:
        return None
    events = sorted((t, delta, r.replica) for r in records if r.replica and r.error is None
                    for t, delta in ((r.sent_s, 1), (r.sent_s + r.e2e_s, -1)))
    running = dict.fromkeys(replicas, 0)
    area = busy = 0.0
    last = None
    for t, delta, replica in events:
        if last is not None and any(running.values()):
            area += (max(running.values()) - min(running.values())) * (t - last)
            busy += t - last
        running[replica] += delta
        last = t
    return round(area / busy, 3) if busy > 0 else None


def summarize(records: list[TurnRecord], wall_s: float, conversations: bool = True) -> dict:
    """TTFT, throughput, prefix-cache hit rate, each replica's share, how evenly they
    were loaded (:func:`in_flight_gap`) and (for ``conversations``) how often a
    conversation's next turn went to the replica of its previous turn."""
    ok = [r for r in records if r.error is None]
    ttfts = [r.ttft_s for r in ok]
    shares = Counter(r.replica for r in ok if r.replica)
    prompt = sum(r.prompt_tokens for r in ok)
    by_user: dict[str, list[TurnRecord]] = {}
    for r in sorted(ok, key=lambda r: (r.user, r.turn)):
        by_user.setdefault(r.user, []).append(r)
    follow_ups = stayed = 0
    for turns in by_user.values():
        for before, after in zip(turns, turns[1:]):
            follow_ups += 1
            stayed += before.replica == after.replica
    counts = sorted(shares.values())
    return {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "error_samples": sorted({r.error for r in records if r.error})[:3],
        "wall_s": round(wall_s, 2),
        "ttft_p50_s": _round(percentile(ttfts, 50)),
        "ttft_p90_s": _round(percentile(ttfts, 90)),
        "ttft_mean_s": _round(statistics.fmean(ttfts) if ttfts else None),
        "output_tok_s": round(sum(r.completion_tokens for r in ok) / wall_s, 2) if wall_s > 0 else None,
        "prompt_tokens": prompt,
        "cached_tokens": sum(r.cached_tokens for r in ok),
        "cache_hit_rate": round(sum(r.cached_tokens for r in ok) / prompt, 4) if prompt else None,
        "replica_requests": dict(sorted(shares.items())),
        "replica_balance": round(counts[-1] / counts[0], 3) if len(counts) > 1 and counts[0] else None,
        "in_flight_gap": in_flight_gap(ok),
        "same_replica_as_previous_turn": round(stayed / follow_ups, 4) if follow_ups and conversations else None,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
