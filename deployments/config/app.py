"""``args`` of the app builder, whole: the model, the engine deployment and the router."""

from __future__ import annotations

from pydantic import Field, model_validator

from deployments.config.base import StrictModel
from deployments.config.model import ModelConfig
from deployments.config.router import IngressConfig
from deployments.config.serve_options import EngineDeploymentConfig, check_queue_holds_admitted


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
    router: IngressConfig = Field(
        default_factory=IngressConfig,
        description="The HTTP ingress: authentication, admission, deadlines, request limits and its own Serve "
                    "options.",
    )

    @model_validator(mode="after")
    def _engine_queue_holds_what_a_router_admits(self) -> AppConfig:
        check_queue_holds_admitted("engine", self.engine.max_queued_requests, self.router.max_in_flight_requests)
        return self
