"""A simulated engine with the face of vLLM's ``AsyncLLM``, for ``model.simulated``.

The engine deployment (:mod:`deployments.engine.deployment`) calls it exactly as it calls vLLM:
``generate(prompt, params, request_id, priority=..., lora_request=...)`` yields outputs with
``outputs[i].text / token_ids / finish_reason / logprobs`` and ``num_cached_tokens`` in
DELTA mode; ``check_health``, ``model_config.max_model_len`` and the stat loggers work the
same. Behind it, one asyncio task runs :class:`~deployments.engine.simulated.scheduler.Scheduler`
steps and sleeps each step's profiled time (times ``time_scale``) instead of computing a
model. It imports neither torch nor vLLM: a replica is a Serve actor and a tokenizer.

What it does not do: it writes a filler token (``" the"`` by default) to ``max_tokens``;
it ignores stop strings, grammars and sampling values (the router still validates them);
it has no LoRA. docs/scaling.md lists what that leaves out of a result.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from deployments.config.engine_profile import EngineProfile
from deployments.engine.backend import EngineBackend
from deployments.engine.simulated.scheduler import Scheduler, SimRequest, Step

FILLER_TEXT = " the"
"""What each simulated token decodes to: one token of most tokenizers, the same token again
when a client sends a reply back as the next turn's history (so its blocks can be hit)."""


class SimulatedEngineError(RuntimeError):
    """The simulated engine's loop failed (a bug): every request after it fails."""


class SimulatedRequestError(ValueError):
    """A request the simulated engine cannot take (as vLLM raises ValueError)."""


class SamplingValues:
    """The simulated engine's ``SamplingParams``: keeps what it uses, accepts the rest."""

    def __init__(self, *, max_tokens: int | None = None, n: int = 1, logprobs: int | None = None,
                 output_kind: Any = None, **others: Any) -> None:
        if max_tokens is None or max_tokens < 1:
            raise SimulatedRequestError(f"max_tokens must be at least 1, got {max_tokens}")
        self.max_tokens, self.n, self.logprobs, self.output_kind = max_tokens, n, logprobs, output_kind
        self.others = others


def simulated_backend() -> EngineBackend:
    """The engine deployment's view of the simulated engine's types."""
    return EngineBackend(
        sampling_params=SamplingValues,
        structured_outputs=dict,
        tokens_prompt=lambda ids, salt: {"prompt_token_ids": ids, "cache_salt": salt},
        delta="delta",
        request_errors=(ValueError,),  # SimulatedRequestError, and the scheduler's own refusals
        dead_errors=(SimulatedEngineError,),
    )


@dataclass(slots=True)
class _Logprob:
    logprob: float
    rank: int
    decoded_token: str


@dataclass(slots=True)
class _Completion:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    logprobs: list[dict[int, _Logprob]] | None


@dataclass(slots=True)
class _Output:
    outputs: list[_Completion]
    num_cached_tokens: int


@dataclass(slots=True, eq=False)
class _Stream:
    """What one request produced that its consumer has not taken yet (DELTA merging: a
    slow consumer gets one output with every token since it last looked)."""

    request: SimRequest
    n: int
    logprobs: int | None
    pending: int = 0
    finished: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class SimulatedEngine:
    """An engine replica's stand-in for vLLM's ``AsyncLLM`` (the module docstring)."""

    def __init__(self, profile: EngineProfile, scheduler: Scheduler, *, time_scale: float, max_model_len: int,
                 output_token: int, stat_loggers: list[Callable[[Any, Any], None]]) -> None:
        self.profile = profile
        self._scheduler = scheduler
        self._time_scale = time_scale
        self._output_token = output_token
        self._stat_loggers = stat_loggers
        self.model_config = SimpleNamespace(max_model_len=max_model_len)
        self._streams: dict[str, _Stream] = {}
        self._work = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self.steps = 0

    async def check_health(self) -> None:
        if self._failure is not None:
            raise SimulatedEngineError(f"the simulated engine's loop failed: {self._failure!r}")

    def shutdown(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()

    async def generate(self, prompt: dict[str, Any], params: SamplingValues, request_id: str, priority: int = 0,
                       lora_request: Any = None) -> AsyncIterator[_Output]:
        """The request's outputs as the simulated steps make them (DELTA mode)."""
        await self.check_health()
        if lora_request is not None:
            raise SimulatedRequestError("the simulated engine has no LoRA adapters")
        request = SimRequest(request_id, list(prompt["prompt_token_ids"]), params.max_tokens, priority,
                             output_token=self._output_token, cache_salt=prompt.get("cache_salt"))
        self._scheduler.add(request)  # ValueError for a request that cannot fit
        stream = _Stream(request, params.n, params.logprobs)
        self._streams[request_id] = stream
        self._ensure_loop()
        self._work.set()
        sent_cached = False
        try:
            while True:
                await stream.wake.wait()
                stream.wake.clear()
                if self._failure is not None:
                    raise SimulatedEngineError(f"the simulated engine's loop failed: {self._failure!r}")
                count, stream.pending = stream.pending, 0
                if count == 0 and not stream.finished:
                    continue
                finish = "length" if stream.finished else None
                yield _Output([self._completion(i, count, finish, stream.logprobs) for i in range(stream.n)],
                              0 if sent_cached else (request.num_cached or 0))
                sent_cached = True
                if stream.finished:
                    return
        finally:
            self._streams.pop(request_id, None)
            if not request.finished:
                self._scheduler.abort(request_id)

    # ---- the engine loop -----------------------------------------------------------
    def _completion(self, index: int, count: int, finish: str | None, logprobs: int | None) -> _Completion:
        ids = [self._output_token] * count
        lps = [{self._output_token: _Logprob(0.0, 1, FILLER_TEXT)} for _ in ids] if logprobs is not None else None
        return _Completion(index, FILLER_TEXT * count, ids, finish, lps)

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        next_at = time.monotonic()
        try:
            while True:
                if not self._scheduler.has_work:
                    self._work.clear()
                    await self._work.wait()
                    next_at = time.monotonic()
                step = self._scheduler.step()
                # The step's outputs exist once it has run: sleep first, then hand them out.
                next_at += max(step.seconds * self._time_scale, 0.0005 if not step.produced else 0.0)
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    next_at = time.monotonic()  # behind (a busy loop): do not try to catch up in a burst
                    await asyncio.sleep(0)
                self._deliver(step)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug in the simulation: fail loudly, as a dead engine would
            self._failure = exc
            for stream in self._streams.values():
                stream.wake.set()
            raise

    def _deliver(self, step: Step) -> None:
        self.steps += 1
        for request in step.produced:
            stream = self._streams.get(request.request_id)
            if stream is None:
                continue
            stream.pending += 1
            stream.finished = request.finished
            stream.wake.set()
        stats = step.stats
        scheduler_stats = SimpleNamespace(
            num_running_reqs=stats.num_running_reqs, num_waiting_reqs=stats.num_waiting_reqs,
            kv_cache_usage=stats.kv_cache_usage,
            prefix_cache_stats=SimpleNamespace(queries=stats.prefix_queries, hits=stats.prefix_hits))
        iteration_stats = SimpleNamespace(
            num_generation_tokens=stats.num_generation_tokens, num_preempted_reqs=stats.num_preempted_reqs,
            prompt_token_stats=SimpleNamespace(computed=stats.prompt_tokens_computed))
        for record in self._stat_loggers:
            record(scheduler_stats, iteration_stats)


def simulated_engine(config: Any, tokenizer: Any, stat_loggers: list[Callable[[Any, Any], None]]) -> SimulatedEngine:
    """The simulated engine ``config`` (a :class:`~deployments.config.ModelConfig` with
    ``simulated`` set) describes: the profile's sizes unless the model's fields override them."""
    sim = config.simulated
    profile = sim.engine_profile
    scheduler = Scheduler(
        profile,
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens,
        kv_cache_blocks=sim.kv_cache_blocks,
        enable_caching=config.enable_prefix_caching is not False,
        priority_policy=config.scheduling_policy == "priority",
    )
    ids = tokenizer.encode(FILLER_TEXT, add_special_tokens=False)
    return SimulatedEngine(profile, scheduler, time_scale=sim.time_scale,
                           max_model_len=config.max_model_len or profile.max_model_len,
                           output_token=ids[0] if ids else 0, stat_loggers=stat_loggers)


def simulated_tokenizer(config: Any) -> Any:
    """The model's fast tokenizer (its ``tokenizer.json``) and chat template, loaded without
    torch: ``AutoTokenizer`` imports transformers' generation code and with it torch, some
    400 MB per process, which 32 simulated replicas on one machine cannot spare."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(config.tokenizer or config.model)
