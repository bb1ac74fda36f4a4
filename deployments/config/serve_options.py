"""Serve's options for the two deployments: the engine replicas and the router (ingress)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from deployments.config.base import StrictModel
from deployments.config.routing import RoutingConfig
from deployments.core.errors import RETRY_AFTER_S


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


class IngressDeploymentOptions(DeploymentOptions):
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


def check_queue_holds_admitted(where: str, max_queued: int, admitted: int | None) -> None:
    """Serve counts a request as queued while it picks a replica for it, so under a burst a
    queue bound below what a router replica admits refuses requests that replicas had room
    for (measured in docs/measurements.md, "The router's bounds")."""
    if admitted is not None and max_queued != -1 and max_queued < admitted:
        raise ValueError(
            f"{where}.max_queued_requests ({max_queued}) must be -1 or at least "
            f"router.max_in_flight_requests ({admitted}): Serve counts a request as queued while "
            "it picks a replica, so a smaller queue refuses part of a burst the router admitted"
        )
