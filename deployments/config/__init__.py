"""Typed configuration for a glm-serve application.

Everything a deployment can be told comes from the ``args`` block of a Serve config
file (``config/*.yaml``) and is validated here once, by :func:`deployments.app.build_app`,
before anything starts. Models forbid unknown fields, so a misspelt key fails with
its own name instead of being silently ignored.

Layout of ``args``::

    model:     which checkpoint and how vLLM runs it           -> ModelConfig
    engine:    the engine deployment (replicas, resources)     -> EngineDeploymentConfig
    router:    the HTTP ingress (limits, its own deployment)   -> IngressConfig

One module per section: ``model`` (with ``lora``, and ``engine_profile`` for the simulated
engine), ``serve_options`` (both deployments' Serve options), ``router`` (the ingress, with
its ``auth`` and ``deadlines`` sub-sections), ``routing`` (``engine.routing``), ``app``
(the whole ``args``) and ``docs`` (docs/configuration.md, rendered from the models).
"""

from deployments.config.app import AppConfig
from deployments.config.base import BUILDER, StrictModel, is_builder
from deployments.config.engine_profile import EngineProfile, SimulatedEngineConfig, load_profile
from deployments.config.lora import ADAPTER_NAME, LORA_RANKS, LoraConfig
from deployments.config.model import CpuConfig, ModelConfig, StreamingConfig
from deployments.config.router import IngressConfig, RequestLimits, SchemaLimits
from deployments.config.routing import RoutingConfig
from deployments.config.serve_options import DeploymentOptions, EngineDeploymentConfig, IngressDeploymentOptions

__all__ = ["ADAPTER_NAME", "BUILDER", "LORA_RANKS", "AppConfig", "CpuConfig", "DeploymentOptions",
           "EngineDeploymentConfig", "EngineProfile", "LoraConfig", "ModelConfig", "RequestLimits", "IngressConfig",
           "IngressDeploymentOptions", "RoutingConfig", "SchemaLimits", "SimulatedEngineConfig", "StreamingConfig",
           "StrictModel", "is_builder", "load_profile"]
