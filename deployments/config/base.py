"""What every config model shares: unknown fields are errors, and the app builder's name."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

BUILDER = "deployments.app.build_app"
"""The app builder's import path (Serve accepts ``module:attr`` and ``module.attr`` alike)."""


PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
"""The variable Ray reads, when a node's HTTP proxy starts, for a callback returning its middlewares."""
PROXY_CALLBACK = "deployments.proxy_gate.middlewares"
"""The proxy gate's import path, for :data:`PROXY_CALLBACK_ENV`."""


def is_builder(import_path: object) -> bool:
    """Whether a Serve application's ``import_path`` is glm-serve's app builder."""
    return str(import_path).replace(":", ".") == BUILDER


class StrictModel(BaseModel):
    """Base for every config model: unknown fields are errors, not no-ops."""

    model_config = ConfigDict(extra="forbid", frozen=True)
