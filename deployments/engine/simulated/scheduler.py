"""vLLM's continuous batching, as a clock-free step function.

:meth:`Scheduler.step` does what one vLLM 0.32 engine step does (``vllm/v1/core/sched/
scheduler.py``), and returns how long the step would take by the engine's profile instead
of running a model. Both the simulated engine replica (:mod:`deployments.engine.simulated.engine`,
which sleeps that long) and the discrete-event simulator (:mod:`benchmarks.harness.scale_sim`,
which advances a virtual clock) drive it, so they batch, cache and evict alike.

One step:

1. *Running* requests first, oldest first, each taking its next tokens from the step's token
   budget (``max_num_batched_tokens``): a prompt's next chunk (chunked prefill) or one decode
   token. A request that needs a KV block when none is free preempts the newest running
   request (its blocks freed, its work redone later), or itself if it is the newest.
2. Then *waiting* requests, first come first served (lower ``priority`` first under the
   priority policy), while budget and ``max_num_seqs`` allow, and not in a step that
   preempted: each looks up its prefix in the cache and is admitted only if blocks for its
   whole uncached prompt are free.
3. Every request whose known tokens are all computed samples one token; one that reached its
   ``max_tokens`` finishes and frees its blocks.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from deployments.config.engine_profile import EngineProfile
from deployments.engine.simulated.block_cache import BlockHash, BlockPool, block_hashes


@dataclass(slots=True, eq=False)
class SimRequest:
    """One sequence in a simulated engine."""

    request_id: str
    tokens: list[int]
    """The prompt's token ids; generated tokens are appended."""
    max_tokens: int
    priority: int = 0
    extra_keys: tuple[Any, ...] | None = None
    """Enters every block hash (vLLM puts a LoRA adapter's name there)."""
    cache_salt: str | None = None
    """Enters the first block's hash, as vLLM's does: requests with other salts share nothing."""
    output_token: int = 0
    """The token id every generated position gets."""
    num_prompt: int = 0
    arrival: int = 0
    computed: int = 0
    generated: int = 0
    num_cached: int | None = None
    """Prompt tokens the prefix cache supplied at first admission (None until admitted)."""
    blocks: list[int] = field(default_factory=list)
    hashes: list[BlockHash] = field(default_factory=list)
    cached_blocks: int = 0
    """How many of ``blocks`` are registered in the cache."""
    finished: bool = False

    def __post_init__(self) -> None:
        self.num_prompt = len(self.tokens)


@dataclass(slots=True)
class StepStats:
    """What one step's scheduler reports (the fields glm-serve reads of vLLM's
    ``SchedulerStats`` and ``IterationStats``)."""

    num_running_reqs: int = 0
    num_waiting_reqs: int = 0
    kv_cache_usage: float = 0.0
    prefix_queries: int = 0
    prefix_hits: int = 0
    num_generation_tokens: int = 0
    num_preempted_reqs: int = 0
    prompt_tokens_computed: int = 0


@dataclass(slots=True)
class Step:
    """One engine step: its duration, the requests that made a token, and the statistics."""

    seconds: float
    produced: list[SimRequest]
    stats: StepStats


class Scheduler:
    """One simulated engine's waiting and running queues over a :class:`BlockPool`."""

    def __init__(self, profile: EngineProfile, *, max_num_seqs: int | None = None,
                 max_num_batched_tokens: int | None = None, kv_cache_blocks: int | None = None,
                 enable_caching: bool = True, priority_policy: bool = False) -> None:
        self.profile = profile
        self.block_size = profile.block_size
        self.max_num_seqs = max_num_seqs or profile.max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens or profile.max_num_batched_tokens
        self.pool = BlockPool(kv_cache_blocks or profile.kv_cache_blocks, enable_caching)
        self.priority_policy = priority_policy
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self._by_id: dict[str, SimRequest] = {}
        self._arrivals = 0

    # ---- requests ----------------------------------------------------------------
    def add(self, request: SimRequest) -> None:
        """Queue ``request``; ValueError for a duplicate id, an empty prompt, or a prompt
        whose blocks could never fit the cache."""
        if request.request_id in self._by_id:
            raise ValueError(f"request id {request.request_id!r} is already running")
        if not request.tokens:
            raise ValueError("the prompt is empty")
        need = -(-(len(request.tokens) + request.max_tokens) // self.block_size)
        if need > self.pool.num_blocks:
            raise ValueError(f"the request needs {need} KV blocks; the engine has {self.pool.num_blocks}")
        self._arrivals += 1
        request.arrival = self._arrivals
        self._extend_hashes(request)
        self._by_id[request.request_id] = request
        self.waiting.append(request)

    def abort(self, request_id: str) -> bool:
        """Drop a request wherever it is; whether it was there."""
        request = self._by_id.pop(request_id, None)
        if request is None:
            return False
        if request in self.running:
            self.running.remove(request)
        else:
            self.waiting.remove(request)
        self.pool.free(request.blocks)
        request.blocks = []
        request.finished = True
        return True

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def __len__(self) -> int:
        return len(self._by_id)

    # ---- one step ----------------------------------------------------------------
    def step(self) -> Step:
        """Schedule, 'run' and account one engine step (the module docstring)."""
        budget = self.max_num_batched_tokens
        scheduled: list[tuple[SimRequest, int]] = []
        victims: set[str] = set()
        for request in list(self.running):
            if budget <= 0:
                break
            if request.request_id in victims:  # preempted earlier in this step
                continue
            num_new = min(len(request.tokens) - request.computed, budget)
            if num_new <= 0:
                continue
            need = self._blocks_for(request.computed + num_new) - len(request.blocks)
            if need > 0:  # most decode steps fit in the request's last block
                while need > self.pool.free_blocks:
                    victim = self._preemption_victim()
                    self._preempt(victim)
                    victims.add(victim.request_id)
                    if victim is request:
                        break
                if request.request_id in victims:
                    continue
                request.blocks += self.pool.allocate(need)
            scheduled.append((request, num_new))
            budget -= num_new
        if not victims:
            budget = self._admit(budget, scheduled)
        return self._finish_step(scheduled, len(victims))

    def _admit(self, budget: int, scheduled: list[tuple[SimRequest, int]]) -> int:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self._next_waiting()
            hits = self.pool.computed_blocks(request.hashes, len(request.tokens), self.block_size)
            computed = len(hits) * self.block_size
            # Reusing a cached block nobody uses takes it out of the free queue too.
            whole = self._blocks_for(len(request.tokens)) - len(hits) + self.pool.unused(hits)
            if whole > self.pool.free_blocks:
                self.pool.queries -= len(request.tokens)  # not admitted: vLLM counts the query once, when it is
                self.pool.hits -= computed
                break
            self.waiting.remove(request)
            num_new = min(len(request.tokens) - computed, budget)
            self.pool.touch(hits)
            request.blocks = list(hits)
            request.cached_blocks = len(hits)
            request.computed = computed
            if request.num_cached is None:
                request.num_cached = computed
            request.blocks += self.pool.allocate(self._blocks_for(computed + num_new) - len(request.blocks))
            self.running.append(request)
            scheduled.append((request, num_new))
            budget -= num_new
        return budget

    def _finish_step(self, scheduled: list[tuple[SimRequest, int]], preempted: int) -> Step:
        stats = StepStats(num_preempted_reqs=preempted)
        prefill = decode = context = 0
        positions = 0.0
        block_size = self.block_size
        produced: list[SimRequest] = []
        for request, num_new in scheduled:
            if num_new == 1 and request.computed >= request.num_prompt:
                decode += 1
                context += request.computed + 1  # attention over its cached tokens and the new one
            else:  # a prompt chunk, or a preempted request's tokens computed again
                prefill += num_new
                start = request.computed
                positions += (start + num_new - 1 + start) * num_new / 2
                stats.prompt_tokens_computed += max(0, min(num_new, request.num_prompt - request.computed))
            request.computed += num_new
            if request.computed // block_size > request.cached_blocks:
                self._cache_full_blocks(request)
            if request.computed < len(request.tokens):
                continue  # a prompt chunk that is not the last: nothing to sample yet
            request.generated += 1
            produced.append(request)
            if request.generated >= request.max_tokens:
                self._finish(request)
            else:
                request.tokens.append(request.output_token)
                if len(request.tokens) % block_size == 0:  # a block just filled
                    self._extend_hashes(request)
        stats.num_generation_tokens = len(produced)
        stats.num_running_reqs = len(self.running)
        stats.num_waiting_reqs = len(self.waiting)
        stats.kv_cache_usage = self.pool.usage
        stats.prefix_queries, stats.prefix_hits = self.pool.reset_counters()
        return Step(self.profile.step_seconds(prefill, decode, context, positions), produced, stats)

    # ---- internals -----------------------------------------------------------------
    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def _extend_hashes(self, request: SimRequest) -> None:
        full = len(request.tokens) // self.block_size
        if full > len(request.hashes):
            parent = request.hashes[-1] if request.hashes else None
            request.hashes += block_hashes(request.tokens, self.block_size, request.extra_keys, request.cache_salt,
                                           start=len(request.hashes), parent=parent)

    def _cache_full_blocks(self, request: SimRequest) -> None:
        full = min(request.computed // self.block_size, len(request.hashes))
        if full > request.cached_blocks:
            self.pool.cache_full(request.blocks[request.cached_blocks:full], request.hashes[request.cached_blocks:full])
            request.cached_blocks = full

    def _next_waiting(self) -> SimRequest:
        if self.priority_policy:
            return min(self.waiting, key=lambda r: (r.priority, r.arrival))
        return self.waiting[0]

    def _preemption_victim(self) -> SimRequest:
        if self.priority_policy:
            return max(self.running, key=lambda r: (r.priority, r.arrival))
        return self.running[-1]

    def _preempt(self, request: SimRequest) -> None:
        self.running.remove(request)
        self.pool.free(request.blocks)
        request.blocks = []
        request.cached_blocks = 0
        request.computed = 0
        self.waiting.appendleft(request)

    def _finish(self, request: SimRequest) -> None:
        request.finished = True
        self.running.remove(request)
        self._by_id.pop(request.request_id, None)
        self.pool.free(request.blocks)
        request.blocks = []
