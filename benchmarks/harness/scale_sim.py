"""A discrete-event simulator of glm-serve at 64-256 engine replicas, in seconds per run.

It drives the *real* routing code: each router replica has its own instance of the
configured policy (:mod:`deployments.routing`, ``prefix`` or ``pow2``), and with ``prefix``
one shared :class:`~deployments.routing.placement_table.PlacementTable`, called in the order
:class:`~deployments.routing.replica_chooser.PolicyReplicaChooser` calls them (ask the table,
choose, accept, learn). Each engine replica is the simulated engine's own
:class:`~deployments.engine.simulated.scheduler.Scheduler` (vLLM's batching, block hashes and LRU
eviction), stepped on a virtual clock by its profile. Only Serve itself is left out: a
request reaches a router replica at random and its chosen replica at once, and the routers
see every replica's true ongoing count (Serve's routers see a cache of it).

The workload (:class:`Workload`): closed-loop users, each in a multi-turn conversation
behind one of a few shared system prompts, thinking between turns, starting a new
conversation after the last turn. Text is made of words, and a word is a token
(:func:`tokenize`), so a reply the engine wrote (filler words) tokenizes back to the same
ids when the user sends it as history, as with a real tokenizer.

Reported per run (after a warm-up): generated tokens/s, prefix-cache hit rate (hit
tokens over looked-up prompt tokens, vLLM's own counters), TTFT p50/p90/p99, and the
peak-to-mean replica load (the busiest replica's time-averaged ongoing requests over the
mean's). ``python -m benchmarks.harness.scale_sim --help`` for the knobs; ``make bench-scale``
runs it beside the Serve runs.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import statistics
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness.stats import percentile
from deployments.config.engine_profile import EngineProfile, load_profile
from deployments.config.routing import RoutingConfig
from deployments.core.generation import GenerationRequest
from deployments.engine.simulated.scheduler import Scheduler, SimRequest, Step
from deployments.routing.placement_table import PlacementTable
from deployments.routing.policy import RoutingPolicy, policy_class

VOCAB = 49_152
FILLER = "the"


_IDS: dict[str, int] = {}


def token_id(word: str) -> int:
    found = _IDS.get(word)
    if found is None:
        found = _IDS[word] = zlib.crc32(word.encode()) % VOCAB
    return found


def tokenize_message(message: dict[str, str]) -> list[int]:
    """One chat message rendered ChatML-style as SmolLM2's template does (``<|im_start|>``,
    role, newline, content, ``<|im_end|>``, newline), a token per word."""
    return [token_id("<|im_start|>"), token_id(message["role"]), NEWLINE,
            *map(token_id, message["content"].split()), token_id("<|im_end|>"), NEWLINE]


def tokenize(messages: list[dict[str, str]]) -> list[int]:
    """A chat's prompt: its messages, then the assistant's turn opened."""
    ids = [t for message in messages for t in tokenize_message(message)]
    return ids + GENERATION_PROMPT


NEWLINE = token_id("\n")
GENERATION_PROMPT = [token_id("<|im_start|>"), token_id("assistant"), NEWLINE]
_COMMON_WORDS = [f"word{i % 997}" for i in range(4096)]
_COMMON_IDS = [token_id(w) for w in _COMMON_WORDS]
_COMMON_TEXT = [" ".join(_COMMON_WORDS[:n]) for n in range(4096)]


@dataclass
class Workload:
    """Closed-loop multi-turn users (the module docstring)."""

    users: int = 400
    system_prompts: int = 4
    system_words: int = 800
    user_words: int = 150
    """Mean words of a user message (uniform from half to one and a half times)."""
    reply_tokens: int = 100
    turns: int = 8
    think_s: float = 3.0
    """Mean think time between a reply's end and the next turn (exponential)."""
    duration_s: float = 240.0
    warmup_s: float = 60.0
    """Not measured: caches fill and conversations spread first."""


@dataclass
class Result:
    """One configuration's outcome."""

    policy: str
    replicas: int
    routers: int
    users: int
    tokens_per_s: float
    hit_rate: float
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p99_s: float
    peak_to_mean_load: float
    requests: int
    wall_s: float
    preemptions: int = 0
    placement_calls: int = 0
    mean_prompt_tokens: float = 0.0


@dataclass(eq=False)
class _User:
    index: int
    system: str
    messages: list[dict[str, str]] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    """The messages' token ids so far (a turn adds its own, not the whole history again)."""
    turn: int = 0
    conversations: int = 0


@dataclass(eq=False)
class _Replica:
    name: str
    scheduler: Scheduler
    stepping: bool = False
    ongoing: int = 0
    load_area: float = 0.0
    since: float = 0.0

    def set_ongoing(self, now: float, delta: int, measuring_from: float) -> None:
        start = max(self.since, measuring_from)
        if now > start:
            self.load_area += self.ongoing * (now - start)
        self.since = now
        self.ongoing += delta


class ScaleSim:
    """One run: ``replicas`` simulated engines, ``routers`` router replicas, one policy."""

    def __init__(self, profile: EngineProfile, replicas: int, routers: int, policy: str, workload: Workload,
                 seed: int = 0, routing: dict[str, Any] | None = None, max_ongoing: int = 256) -> None:
        self.now = 0.0
        self.workload = workload
        self.rng = random.Random(seed)
        random.seed(seed)  # pow2 draws its two replicas from the module's generator, as Serve's router does
        self.max_ongoing = max_ongoing
        cfg = RoutingConfig(policy=policy, **(routing or {}))
        cls = policy_class(policy)
        clock = lambda: self.now  # noqa: E731 - the policies' and table's clock is the virtual one
        self.routers: list[RoutingPolicy] = []
        for i in range(routers):
            kwargs = {"rng": random.Random(seed * 1000 + i), "clock": clock} if policy == "prefix" else {}
            self.routers.append(cls(cfg, **kwargs))
        self.table = (PlacementTable(cfg.max_entries, cfg.placement_memory_s, clock=clock,
                                     load_gap=cfg.max_load_gap, load_factor=cfg.max_load_factor)
                      if cfg.directory and cls.uses_placement_table else None)
        self.replicas = {f"r{i:03d}": _Replica(f"r{i:03d}", Scheduler(profile)) for i in range(replicas)}
        for router in self.routers:
            router.set_replicas(list(self.replicas))
        self.systems = [f"[system {s}] " + " ".join(f"sys{s}w{w}" for w in range(workload.system_words))
                        for s in range(workload.system_prompts)]
        self.system_tokens = {text: tokenize_message({"role": "system", "content": text}) for text in self.systems}
        self.users = [_User(i, self.rng.choice(self.systems)) for i in range(workload.users)]
        self._events: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self._arrival: dict[str, tuple[float, _User, _Replica]] = {}
        self.ttfts: list[float] = []
        self.tokens = 0
        self.queries = self.hits = self.preemptions = self.requests = self.placement_calls = 0
        self.prompt_tokens = 0

    # ---- events ------------------------------------------------------------------------
    def _at(self, when: float, kind: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (when, self._seq, kind, payload))

    def run(self) -> Result:
        started = time.monotonic()
        w = self.workload
        for user in self.users:  # users arrive over the first few think times
            self._at(self.rng.uniform(0, 3 * w.think_s), "turn", user)
        end = w.warmup_s + w.duration_s
        while self._events:
            when, _, kind, payload = heapq.heappop(self._events)
            if when > end:
                break
            self.now = when
            if kind == "turn":
                self._turn(payload)
            else:
                self._step_done(*payload)
        for replica in self.replicas.values():
            replica.set_ongoing(end, 0, w.warmup_s)
        loads = [r.load_area / w.duration_s for r in self.replicas.values()]
        mean = statistics.fmean(loads) or 1.0

        def pct(q: float) -> float:
            """TTFT's ``q``-th percentile; 0 when nothing was measured. The Serve runs it is
            checked against (``make bench-scale``) read theirs with the same helper."""
            value = percentile(self.ttfts, q)
            return 0.0 if value is None else value

        return Result(policy=self.routers[0].name, replicas=len(self.replicas), routers=len(self.routers),
                      users=w.users, tokens_per_s=self.tokens / w.duration_s,
                      hit_rate=self.hits / self.queries if self.queries else 0.0,
                      ttft_p50_s=pct(50), ttft_p90_s=pct(90), ttft_p99_s=pct(99),
                      peak_to_mean_load=max(loads) / mean, requests=self.requests,
                      wall_s=time.monotonic() - started, preemptions=self.preemptions,
                      placement_calls=self.placement_calls,
                      mean_prompt_tokens=self.prompt_tokens / self.requests if self.requests else 0.0)

    def _measuring(self) -> bool:
        return self.now >= self.workload.warmup_s

    # ---- a user's turn -------------------------------------------------------------------
    def _turn(self, user: _User) -> None:
        w = self.workload
        if user.turn == 0:
            user.conversations += 1
            user.messages = [{"role": "system", "content": user.system}]
            user.tokens = list(self.system_tokens[user.system])
        words = max(1, int(self.rng.uniform(0.5, 1.5) * w.user_words))
        # A unique first word makes the message (and every block hash after it) unique; the
        # rest are common words, so that tokenizing them is a dict lookup.
        # (as many words as the Serve benchmark's tag has tokens)
        tag = [f"[u{user.index}", f"c{user.conversations}", f"t{user.turn}]", "-", "-", "-", "-", "-", "-"]
        user.messages.append({"role": "user", "content": " ".join(tag) + " " + _COMMON_TEXT[words - 1]})
        user.tokens += [token_id("<|im_start|>"), token_id("user"), NEWLINE, *map(token_id, tag),
                        *_COMMON_IDS[:words - 1], token_id("<|im_end|>"), NEWLINE]
        self._seq += 1
        request = GenerationRequest(request_id=f"q{self._seq}", messages=list(user.messages), max_tokens=w.reply_tokens)
        replica = self._route(request)
        self._arrival[request.request_id] = (self.now, user, replica)
        replica.set_ongoing(self.now, +1, w.warmup_s)
        replica.scheduler.add(SimRequest(request.request_id, user.tokens + GENERATION_PROMPT, w.reply_tokens,
                                         output_token=token_id(FILLER)))
        if not replica.stepping:
            self._start_step(replica)

    def _route(self, request: GenerationRequest) -> _Replica:
        """What a router replica does with a request (PolicyReplicaChooser's order)."""
        policy = self.rng.choice(self.routers)
        loads = {name: r.ongoing for name, r in self.replicas.items()}
        placed = None
        if self.table is not None:
            query = policy.placement_query(request, loads)
            if query is not None:
                self.placement_calls += 1
                placed = self.table.resolve(query[0], loads, query[1])
        decision = policy.choose(request, loads, placed=placed)
        name = decision.replica
        if loads[name] >= self.max_ongoing:  # Serve tries the others, least loaded first
            name = min(loads, key=loads.__getitem__)
        key = policy.routed(decision, request, name)
        if key is not None and self.table is not None:
            self.table.assign(key, name)
        return self.replicas[name]

    # ---- engine steps ----------------------------------------------------------------------
    def _start_step(self, replica: _Replica) -> None:
        step = replica.scheduler.step()
        replica.stepping = True
        # an empty step (nothing fit) still takes its fixed cost, so time moves on
        self._at(self.now + max(step.seconds, 1e-4), "step", (replica, step))

    def _step_done(self, replica: _Replica, step: Step) -> None:
        measuring = self._measuring()
        if measuring:
            self.tokens += step.stats.num_generation_tokens
            self.queries += step.stats.prefix_queries
            self.hits += step.stats.prefix_hits
            self.preemptions += step.stats.num_preempted_reqs
        for request in step.produced:
            arrived, user, _ = self._arrival[request.request_id]
            if request.generated == 1 and measuring:
                self.ttfts.append(self.now - arrived)
            if request.finished:
                self._finished(request, user, replica)
        replica.stepping = False
        if replica.scheduler.has_work:
            self._start_step(replica)

    def _finished(self, request: SimRequest, user: _User, replica: _Replica) -> None:
        del self._arrival[request.request_id]
        replica.set_ongoing(self.now, -1, self.workload.warmup_s)
        if self._measuring():
            self.requests += 1
            self.prompt_tokens += request.num_prompt
        user.messages.append({"role": "assistant", "content": " ".join([FILLER] * request.generated)})
        user.tokens += [*GENERATION_PROMPT, *[request.output_token] * request.generated, token_id("<|im_end|>"),
                        NEWLINE]
        user.turn = (user.turn + 1) % self.workload.turns
        self._at(self.now + self.rng.expovariate(1.0 / self.workload.think_s), "turn", user)


def run(profile: EngineProfile, replicas: int, routers: int, policy: str, workload: Workload,
        seed: int = 0, time_scale: float = 1.0) -> Result:
    """One configuration; ``time_scale`` stretches every engine step, as ``model.simulated.time_scale``
    does (used to compare with Serve runs that needed it)."""
    return ScaleSim(profile.scaled(time_scale), replicas, routers, policy, workload, seed).run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="gpu-h100-glm4-9b")
    parser.add_argument("--replicas", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--routers", type=int, default=8)
    parser.add_argument("--policies", nargs="+", default=["pow2", "prefix"])
    parser.add_argument("--users-per-replica", type=float, default=40.0)
    parser.add_argument("--duration", type=float, default=Workload.duration_s)
    parser.add_argument("--warmup", type=float, default=Workload.warmup_s)
    parser.add_argument("--think", type=float, default=Workload.think_s)
    parser.add_argument("--system-words", type=int, default=Workload.system_words)
    parser.add_argument("--user-words", type=int, default=Workload.user_words)
    parser.add_argument("--reply-tokens", type=int, default=Workload.reply_tokens)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale_sim.json"))
    args = parser.parse_args()
    profile = load_profile(args.profile)
    results = []
    for replicas in args.replicas:
        workload = Workload(users=int(args.users_per_replica * replicas), duration_s=args.duration,
                            warmup_s=args.warmup, think_s=args.think, system_words=args.system_words,
                            user_words=args.user_words, reply_tokens=args.reply_tokens)
        for policy in args.policies:
            result = run(profile, replicas, args.routers, policy, workload, args.seed)
            results.append(result)
            print(f"{policy:7s} {replicas:4d} replicas {workload.users:6d} users: {result.tokens_per_s:9.0f} tok/s, "
                  f"hit rate {result.hit_rate:5.1%}, TTFT p50/p90 {result.ttft_p50_s:.3f}/{result.ttft_p90_s:.3f} s, "
                  f"peak/mean load {result.peak_to_mean_load:.2f}, {result.requests} requests, "
                  f"{result.wall_s:.0f} s wall", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"profile": profile.model_dump(), "results": [asdict(r) for r in results]},
                                   indent=2))


if __name__ == "__main__":
    main()
