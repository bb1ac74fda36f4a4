"""The app builder: ``import_path: deployments.app:build_app`` in ``config/*.yaml``.

``serve run config/serve.yaml`` calls :func:`build_app` with the config's ``args``
block. It validates them once (an unknown or wrong field fails here, by name) and
binds the graph ``IngressDeployment -> EngineDeployment``.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from deployments.config import AppConfig
from deployments.engine.deployment import EngineDeployment
from deployments.engine.engine_args import check_engine_kwargs
from deployments.ingress.deployment import IngressDeployment
from deployments.routing.policy import request_router_config

ENGINE_DEPLOYMENT = "GLMEngine"
INGRESS_DEPLOYMENT = "GLMRouter"


def build_app(args: dict[str, Any]) -> Application:
    """Validate ``args`` against :class:`~deployments.config.AppConfig` and bind the app."""
    config = AppConfig.model_validate(args)
    if config.model.engine_kwargs:
        check_engine_kwargs(config.model)  # imports vLLM (seconds), so only when there is something to check
    options = config.engine.serve_options()
    lora = config.model.lora
    options["request_router_config"] = request_router_config(config.engine.routing, lora.slots if lora else 1)
    engine = EngineDeployment.options(name=ENGINE_DEPLOYMENT, **options).bind(
        config.model, config.engine.stall_timeout_s, config.engine.export_ray_metrics)
    return IngressDeployment.options(
        name=INGRESS_DEPLOYMENT, **config.router.deployment.serve_options()
    ).bind(engine, config.model, config.router, warm_engine=not config.engine.may_scale_to_zero)
