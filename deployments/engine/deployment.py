"""The engine deployment: each replica owns one vLLM engine (one GPU, or a set of CPU cores).

A replica turns a :class:`~deployments.core.generation.GenerationRequest` into token ids
(rendering chat messages with the model's own chat template), checks them against
the context length, and runs them through vLLM's public ``AsyncLLM`` API. It never
speaks HTTP: the router owns the wire format. See :mod:`deployments.core.generation` for
what the methods below yield and return.

CPU and GPU run this same code; they differ only in configuration
(``ray_actor_options.num_gpus``, ``gpu_memory_utilization``, ``cpu.threads_bind``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from chat_formats import get_chat_format
from deployments.config import ModelConfig
from deployments.core.errors import APIError, EngineUnavailable, model_not_found
from deployments.core.generation import (
    Choice,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
)
from deployments.engine.adapters import EngineAdapters
from deployments.engine.backend import vllm_backend
from deployments.engine.engine_args import apply_cpu_settings, check_engine_kwargs, stop_and_sampling_defaults
from deployments.engine.inputs import RequestInput
from deployments.engine.lifetime import mark_engine_owner
from deployments.engine.outputs import ChoiceSoFar
from deployments.engine.stats import EngineStats, ray_stat_logger
from deployments.lora.catalog import AdapterCatalog
from deployments.stream_channel import FrameTooLarge, ReplyTo, StreamSender

logger = logging.getLogger("glm_serve.engine")

def stalled(in_flight: int, quiet_s: float, timeout_s: float) -> bool:
    """Whether an engine replica with ``in_flight`` generations whose engine has made no
    output (and taken no new request) for ``quiet_s`` is stuck: a busy engine produces,
    an idle one has nothing to do, a stuck one has work and makes nothing."""
    return in_flight > 0 and quiet_s > timeout_s


@serve.deployment
class EngineDeployment:
    """One vLLM engine. Serve places one replica per GPU (``num_gpus: 1``)."""

    def __init__(self, config: ModelConfig, stall_timeout_s: float = 120.0, export_ray_metrics: bool = False):
        import ray

        context = serve.get_replica_context()
        self.replica_id: str = context.replica_id.unique_id
        # The GPUs Ray gave this replica (num_gpus in ray_actor_options); [] on CPU.
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        local_rank = context.rank.local_rank if getattr(context, "rank", None) is not None else 0
        env = apply_cpu_settings(config.cpu, local_rank)
        logger.info("engine replica %s (local rank %d) starting with %s", self.replica_id, local_rank, env)

        self._config = config
        self._format = get_chat_format(config.chat_format)
        self._stats = EngineStats()
        if config.simulated is not None:
            from deployments.engine.simulated.engine import simulated_backend, simulated_engine, simulated_tokenizer

            # No generation config: a simulated reply runs to max_tokens, whatever its eos ids.
            self._tokenizer = simulated_tokenizer(config)
            self._backend = simulated_backend()
            self._engine = simulated_engine(config, self._tokenizer, [self._stats.record])
            eos_ids, self._sampling_defaults = set(), {}
        else:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(
                config.tokenizer or config.model, trust_remote_code=config.trust_remote_code
            )
            self._backend, self._engine = vllm_backend(), self._start_vllm(config, export_ray_metrics)
            eos_ids, self._sampling_defaults = stop_and_sampling_defaults(config.model, config.trust_remote_code)
        self._input = RequestInput(self._format, self._tokenizer)
        self._adapters = EngineAdapters(self._engine, AdapterCatalog(config.lora)) if config.lora else None
        self.max_model_len: int = self._engine.model_config.max_model_len
        self._stop_token_ids = sorted(eos_ids | set(config.stop_token_ids))
        # ignore_eos means "do not stop at end-of-sequence": the generation config's eos
        # ids are exactly that, so such requests keep only the configured stop ids.
        self._stop_token_ids_ignoring_eos = sorted(set(config.stop_token_ids))
        self._running = 0  # streams in flight on this replica (sets the chunk size)
        self._in_flight = 0  # generations in vLLM, streamed or whole
        self._last_progress = time.monotonic()
        self._stall_timeout_s = stall_timeout_s
        self._priority_scheduling = config.scheduling_policy == "priority"
        self._sender = StreamSender()
        logger.info(
            "engine replica %s ready: max_model_len=%d stop_token_ids=%s sampling defaults=%s",
            self.replica_id, self.max_model_len, self._stop_token_ids, self._sampling_defaults,
        )

    def _start_vllm(self, config: ModelConfig, export_ray_metrics: bool) -> Any:
        check_engine_kwargs(config)
        mark_engine_owner()
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        stat_loggers = [self._stats.logger_factory()]
        if export_ray_metrics:
            stat_loggers.append(ray_stat_logger())
        return AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**config.engine_args()), stat_loggers=stat_loggers)

    # ---- what Serve calls -------------------------------------------------------
    async def check_health(self) -> None:
        """Serve's periodic probe: raising marks the replica unhealthy and Serve replaces it.

        It never waits behind generation: vLLM's own check reads the engine's state, and
        the stall check compares two clocks."""
        await self._engine.check_health()
        quiet_s = time.monotonic() - self._last_progress
        if stalled(self._in_flight, quiet_s, self._stall_timeout_s):
            raise RuntimeError(f"engine replica {self.replica_id}: {self._in_flight} requests and no output for "
                               f"{quiet_s:.0f} s (stall_timeout_s {self._stall_timeout_s:g})")

    def record_routing_stats(self) -> dict[str, Any]:
        """Serve's routing-stats hook, polled by the controller every
        ``engine.routing.stats_period_s``: vLLM's scheduler totals for the routers'
        ``/metrics`` and routing (deployments/core/engine_snapshot.py)."""
        snapshot = self._stats.snapshot()
        if self._adapters is not None:
            snapshot = self._adapters.report(snapshot)
        return snapshot.to_wire()

    def __del__(self) -> None:
        sender = getattr(self, "_sender", None)
        if sender is not None:
            sender.close()
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.shutdown()
        request_input = getattr(self, "_input", None)
        if request_input is not None:
            request_input.shutdown()

    # ---- what the router calls --------------------------------------------------
    async def model_info(self) -> dict[str, Any]:
        """Facts the router publishes on /v1/models."""
        await self._engine.check_health()
        return {
            "id": self._config.name,
            "max_model_len": self.max_model_len,
            "replica_id": self.replica_id,
            "gpu_ids": self.gpu_ids,
        }

    async def generate(self, request: GenerationRequest, reply_to: ReplyTo) -> int:
        """Stream a request's chunks to the router's stream channel at ``reply_to``.

        Returns how many chunks were sent once the last one is written; raises
        :class:`APIError` (and sends nothing) when the request is refused. The call
        stays open for the whole generation, so Serve counts it as ongoing on this
        replica, and cancelling it aborts the generation in vLLM. Past the request's
        deadline the generation is aborted here too, so a router that vanished without
        a word (its node gone) leaves no work running to ``max_tokens``.
        """
        rendered, structured = await self._input.render(request), await self._input.structured(request)
        prompt, params, num_prompt = self._prepare(request, rendered, structured)
        lora = await self._lora(request)
        sending = self._sender.send_all(reply_to, self._chunks(request, prompt, params, num_prompt, lora))
        try:
            if request.deadline is None:
                return await sending
            return await asyncio.wait_for(sending, max(0.0, request.deadline - time.time()))
        except asyncio.TimeoutError:
            raise APIError(504, "The request timed out.", "timeout_error", code="timeout") from None
        except FrameTooLarge as exc:
            raise APIError(500, f"A chunk of the reply could not be sent: {exc}", "server_error") from None

    async def _chunks(self, request: GenerationRequest, prompt: Any, params: Any,
                      num_prompt: int, lora: Any = None) -> AsyncIterator[GenerationChunk]:
        """Each choice's text deltas as the engine makes them, gathered per
        :meth:`~deployments.config.StreamingConfig.chunk_tokens` under load.

        vLLM's DELTA output mode merges the tokens that piled up while this generator
        was busy, so a slow consumer gets fewer, larger chunks instead of a backlog.
        """
        first = True
        so_far: dict[int, ChoiceSoFar] = {}
        streaming = self._config.streaming
        self._running += 1
        try:
            async for output in self._outputs(prompt, params, request, lora):
                for completion in output.outputs:
                    h = so_far.setdefault(completion.index, ChoiceSoFar()).add(completion, request.logprobs)
                    if completion.finish_reason is None and not first and (
                        not h.text or h.tokens < streaming.chunk_tokens(self._running)
                    ):
                        continue
                    chunk = GenerationChunk(h.text, h.tokens, completion.finish_reason, index=completion.index,
                                            logprobs=h.logprobs if request.logprobs is not None else None)
                    so_far[completion.index] = ChoiceSoFar()
                    if first:
                        chunk.prompt_tokens = num_prompt
                        chunk.cached_tokens = output.num_cached_tokens or 0
                        chunk.replica_id = self.replica_id
                        first = False
                    yield chunk
        finally:
            self._running -= 1

    async def complete(self, request: GenerationRequest) -> GenerationResult:
        """Run a request to the end and return it whole (one Ray hop, no per-token traffic).

        vLLM streams it to this replica in deltas (not only its final output), so the
        first-token deadline can be kept: a final-only request shows nothing until the end."""
        rendered, structured = await self._input.render(request), await self._input.structured(request)
        prompt, params, num_prompt = self._prepare(request, rendered, structured)
        lora = await self._lora(request)
        so_far: dict[int, ChoiceSoFar] = {}
        finish: dict[int, str | None] = {}
        cached = 0
        async for output in self._outputs(prompt, params, request, lora):
            cached = max(cached, output.num_cached_tokens or 0)
            for completion in output.outputs:
                so_far.setdefault(completion.index, ChoiceSoFar()).add(completion, request.logprobs)
                finish[completion.index] = completion.finish_reason
        assert so_far, "vLLM finished a request without output"
        choices = [
            Choice(text=h.text, completion_tokens=h.tokens, finish_reason=finish[index],
                   logprobs=h.logprobs if request.logprobs is not None else None)
            for index, h in sorted(so_far.items())
        ]
        return GenerationResult(choices=choices, prompt_tokens=num_prompt, replica_id=self.replica_id,
                                cached_tokens=cached)

    async def tokenize(self, request: GenerationRequest) -> dict[str, Any]:
        """The prompt text and token ids exactly as :meth:`generate` would give them to vLLM."""
        text, token_ids = await self._input.render(request)
        return {"prompt": text, "tokens": token_ids, "count": len(token_ids), "max_model_len": self.max_model_len}

    # ---- internals --------------------------------------------------------------
    async def _lora(self, request: GenerationRequest) -> Any:
        """The request's adapter, loaded (deployments/engine/adapters.py), or None for the base
        model; :class:`APIError` when it names one this replica cannot serve."""
        if request.adapter is None:
            return None
        if self._adapters is None:
            raise model_not_found(f"The model `{request.adapter}` does not exist.")
        return await self._adapters.lora_request(request.adapter, request.tenant, request.adapter_loads_per_minute)

    async def _outputs(self, prompt: Any, params: Any, request: GenerationRequest,
                       lora: Any = None) -> AsyncIterator[Any]:
        """vLLM's outputs for one request, with its failures in this module's two kinds:
        the request's fault or a missed deadline (:class:`APIError`), or the engine's
        (:class:`EngineUnavailable`). Leaving this generator early aborts the request in vLLM."""
        self._last_progress = time.monotonic()
        self._in_flight += 1
        # A priority other than 0 is an error in vLLM under 'fcfs': there, every request is equal.
        priority = request.priority if self._priority_scheduling else 0
        outputs = self._engine.generate(prompt, params, request.request_id, priority=priority, lora_request=lora)
        try:
            first = await self._first_output(outputs, request)
            if first is None:
                return
            self._last_progress = time.monotonic()
            yield first
            async for output in outputs:
                self._last_progress = time.monotonic()
                yield output
        except self._backend.dead_errors as exc:
            raise EngineUnavailable(f"the vLLM engine of replica {self.replica_id} died: {exc}") from None
        except self._backend.request_errors as exc:  # vLLM refused the request's values
            raise APIError(400, f"Invalid request: {exc}", param=getattr(exc, "parameter", None)) from None
        finally:
            self._in_flight -= 1
            await outputs.aclose()

    @staticmethod
    async def _first_output(outputs: AsyncIterator[Any], request: GenerationRequest) -> Any:
        """The first output, within the request's first-token deadline (its time in Serve's
        queues counts: the router stamped the deadline when the request arrived)."""
        if request.first_token_deadline is None:
            return await anext(outputs, None)
        remaining = request.first_token_deadline - time.time()
        try:
            if remaining <= 0:
                raise asyncio.TimeoutError
            return await asyncio.wait_for(anext(outputs, None), remaining)
        except asyncio.TimeoutError:
            raise APIError(504, "The request timed out waiting for its first token.", "timeout_error",
                           code="timeout") from None

    def _prepare(self, request: GenerationRequest, rendered: tuple[str | None, list[int]],
                 structured: dict[str, Any] | None) -> tuple[Any, Any, int]:
        """Token ids and SamplingParams (DELTA output) for a rendered request; raises :class:`APIError`."""
        backend = self._backend
        token_ids = rendered[1]
        num_prompt = len(token_ids)
        param = "messages" if request.messages is not None else "prompt"
        if num_prompt == 0:
            raise APIError(400, "The prompt is empty.", param=param)
        if num_prompt >= self.max_model_len:
            raise APIError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, your "
                f"request has {num_prompt} input tokens. Please reduce the length of the input.",
                param=param,
                code="context_length_exceeded",
            )
        room = self.max_model_len - num_prompt
        if request.max_tokens is not None:
            if request.max_tokens > room:
                raise APIError(
                    400,
                    f"max_tokens is too large: {request.max_tokens}. This model's maximum context length "
                    f"is {self.max_model_len} tokens and your request has {num_prompt} input tokens "
                    f"({request.max_tokens} > {self.max_model_len} - {num_prompt}).",
                    param="max_tokens",
                    code="context_length_exceeded",
                )
            max_tokens = request.max_tokens
        else:
            max_tokens = min(room, self._config.default_max_tokens or room)
        try:
            params = backend.sampling_params(
                **{**self._sampling_defaults, **request.sampling},
                max_tokens=max_tokens,
                logprobs=request.logprobs,
                structured_outputs=backend.structured_outputs(**structured) if structured else None,
                stop_token_ids=(self._stop_token_ids_ignoring_eos if request.sampling.get("ignore_eos")
                                else self._stop_token_ids),
                output_kind=backend.delta,
            )
        except (ValueError, TypeError) as exc:
            raise APIError(400, f"Invalid sampling parameters: {exc}",
                                 param=getattr(exc, "parameter", None)) from None
        return backend.tokens_prompt(token_ids, request.cache_salt), params, num_prompt
