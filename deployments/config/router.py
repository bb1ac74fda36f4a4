"""``router``: the HTTP ingress: request limits, admission, authentication and deadlines."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from deployments.config.base import StrictModel
from deployments.config.serve_options import IngressDeploymentOptions, check_queue_holds_admitted


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
    max_whole_logprobs: int = Field(
        default=65_536, ge=1,
        description="Most log-probabilities a whole (non-streamed) response may carry: n x max_tokens x "
                    "(top_logprobs + 1). The ingress builds such a response in memory before it sends it; a stream "
                    "leaves chunk by chunk and has no such cap. What one costs: docs/operations.md.",
    )


class IngressAuth(StrictModel):
    """``router.auth``: who may call. With a key source set, every route but /health needs
    'Authorization: Bearer <key>' (docs/tenants.md)."""

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
    metrics_without_key: bool = Field(
        default=False, description="Serve GET /metrics without an API key (for a scraper inside the network).",
    )
    allow_unauthenticated: bool = Field(
        default=False,
        description="Serve with no key source on an HTTP host other than loopback, on purpose (a trusted network "
                    "in front of it). Without it, `glm-serve check` and `glm-serve run` refuse such a config.",
    )

    @property
    def has_keys(self) -> bool:
        """Whether any key source is set (keys env, keys file or tenants file)."""
        return any((self.api_keys_env, self.api_keys_file, self.tenants_file))


class IngressDeadlines(StrictModel):
    """``router.deadlines``: how long each part of a request may take before it is cut."""

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
    client_send_timeout_s: float | None = Field(
        default=60.0, gt=0,
        description="A generation request whose client has kept Serve's proxy waiting this long in all "
                    "(reading nothing, or a little now and then, with its connection's buffers full) is cut: its "
                    "engine work aborted, its connection closed. Enforced by glm-serve's proxy gate in Serve's "
                    "proxy. None: wait on such a client.",
    )
    health_timeout_s: float = Field(
        default=5.0, gt=0, description="How long GET /health waits for Serve's controller to say how the "
                                       "engine replicas are.",
    )

    @model_validator(mode="after")
    def _first_token_within_the_request(self) -> IngressDeadlines:
        if self.first_token_timeout_s > self.request_timeout_s:
            raise ValueError("first_token_timeout_s must not exceed request_timeout_s")
        return self


MOVED_KEYS: dict[str, str] = {**{name: "auth" for name in IngressAuth.model_fields},
                              **{name: "deadlines" for name in IngressDeadlines.model_fields}}
"""Keys that were once ``router.<key>`` and are now ``router.<section>.<key>``: still read
from their old place (``glm-serve check`` names the new one)."""


def moved_keys(router: Any) -> list[tuple[str, str]]:
    """(old key, new place) for each key a raw ``router`` mapping sets at its old place."""
    if not isinstance(router, dict):
        return []
    return [(f"router.{key}", f"router.{MOVED_KEYS[key]}.{key}") for key in router if key in MOVED_KEYS]


class IngressConfig(StrictModel):
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
    allow_ignore_eos: bool = Field(
        default=False,
        description="Whether requests may set ignore_eos (generate to max_tokens whatever the model says): "
                    "a benchmark's tool, and a way for a caller to make every request cost the most.",
    )
    batch_admission_share: float = Field(
        default=0.75, gt=0, le=1,
        description="Share of router.max_in_flight_requests that batch tenants' requests may fill on a router "
                    "replica; past it they get 503 with Retry-After while interactive requests are still "
                    "admitted. Without max_in_flight_requests, priority acts only in the engines.",
    )
    export_ray_metrics: bool = Field(
        default=True,
        description="Also export the router's series through Ray's metrics agent on each node, as ray_glm_serve_* "
                    "tagged with the router replica, so one scrape of a node covers every router replica on it.",
    )
    log_prompts: bool = Field(
        default=False, description="Put prompt and completion text in the access log. Off: never logged.",
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
    auth: IngressAuth = Field(
        default_factory=IngressAuth,
        description="Who may call: API keys, tenants, and whether /metrics needs a key.",
    )
    deadlines: IngressDeadlines = Field(
        default_factory=IngressDeadlines,
        description="How long a request, its first token, its body, its client and /health may take.",
    )
    deployment: IngressDeploymentOptions = Field(
        default_factory=IngressDeploymentOptions,
        description="Serve options of the router deployment (the HTTP ingress).",
    )

    @model_validator(mode="before")
    @classmethod
    def _keys_at_their_old_place(cls, data: Any) -> Any:
        # Configs written before router.auth and router.deadlines existed keep working.
        if not isinstance(data, dict) or not any(key in MOVED_KEYS for key in data):
            return data
        data = dict(data)
        for key in [key for key in data if key in MOVED_KEYS]:
            section = dict(data.get(MOVED_KEYS[key]) or {})
            if key in section:
                raise ValueError(f"{key} is set twice: as router.{key} and as router.{MOVED_KEYS[key]}.{key}")
            section[key] = data.pop(key)
            data[MOVED_KEYS[key]] = section
        return data

    @model_validator(mode="after")
    def _room_above_the_stream_cap(self) -> IngressConfig:
        # A router replica full of streams must still take /health, /metrics and the
        # requests it refuses itself; Serve would otherwise queue or refuse those too.
        cap = self.max_in_flight_requests
        if cap is not None and self.deployment.max_ongoing_requests <= cap:
            raise ValueError(
                f"deployment.max_ongoing_requests ({self.deployment.max_ongoing_requests}) must exceed "
                f"max_in_flight_requests ({cap}), leaving room for /health and refusals"
            )
        check_queue_holds_admitted("router.deployment", self.deployment.max_queued_requests, cap)
        return self
