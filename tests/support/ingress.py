"""An ingress context without Ray, for the ingress's unit tests (deployments/ingress/)."""

from __future__ import annotations

from types import SimpleNamespace

from deployments.config import IngressConfig
from deployments.ingress.context import IngressContext
from deployments.ingress.metrics import IngressMetrics


def ingress_context(**router) -> IngressContext:
    """A router replica's context with ``router`` as its config; engine and receiver are stand-ins."""
    from chat_formats import get_chat_format
    from deployments.ingress.admission import Admission

    metrics = IngressMetrics()
    engine = SimpleNamespace(app_name="glm", deployment_name="GLMEngine")
    return IngressContext(engine=engine, receiver=None, model_name="m", chat_format=get_chat_format("template"),
                          config=IngressConfig(**router), metrics=metrics, admission=Admission(None, metrics))
