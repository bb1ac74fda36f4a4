"""Every place glm-serve touches Ray Serve's private surface, in one module.

Ray Serve 2.60.0 is the version these were read in (pyproject.toml pins it). Each has no
public equivalent there; each is named in :data:`PRIVATE_NAMES`, and
tests/unit/core/test_serve_private.py fails, naming the attribute, when a Ray upgrade moves
one. The rest of glm-serve uses Serve's public API only: ``ray.serve.request_router``
(``RequestRouter`` and its public properties ``curr_replicas``, ``app_name``,
``replica_queue_len_cache``; the ``deployment_id`` its constructor is given),
``DeploymentHandle``, ``serve.status``.

A failure here is loud, not a silent fall-back: an import error at module import, an
``AttributeError`` naming the attribute at the call.
"""

from __future__ import annotations

from typing import Any

from deployments.core.private_surface import PrivateName, missing_names

RAY_VERSION_CHECKED = "2.60.0"

PRIVATE_NAMES: tuple[PrivateName, ...] = (
    ("ray.serve._private.request_router.pow_2_router", "PowerOfTwoChoicesRequestRouter",
     "routing.policy: pow2 runs Serve's own router, which 2.60 does not export"),
    ("ray.serve._private.request_router.request_router", "RequestRouter._probe_queue_lens",
     "the prefix chooser refreshes stale queue lengths of replicas Serve is not probing"),
    ("ray.serve._private.common", "RequestMetadata.call_method",
     "which engine method a pending request calls (routed by prefix or not)"),
    ("ray.serve._private.common", "RequestMetadata.internal_request_id",
     "a pending request's id, to count the chooser's own in-flight requests"),
    ("ray.serve._private.constants", "SERVE_CONTROLLER_NAME",
     "the proxy gate reads the applications' args and route prefixes from Serve's controller"),
    ("ray.serve._private.constants", "SERVE_NAMESPACE", "the same"),
    ("ray.serve._private.controller", "ServeController.get_serve_instance_details", "the same"),
)
"""(module, attribute, why): every private name glm-serve uses."""


def missing_private_names() -> list[str]:
    """The private names that this Ray no longer has, each as ``module:attribute (why)``."""
    return missing_names(PRIVATE_NAMES)


def pow2_router_class() -> type:
    """Serve's default power-of-two-choices request router."""
    from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter

    return PowerOfTwoChoicesRequestRouter


def probe_queue_lens(router: Any, replicas: list[Any]) -> Any:
    """A coroutine that asks ``replicas`` their queue lengths and stores the answers in
    ``router.replica_queue_len_cache`` (what Serve does for the replicas it tries)."""
    return router._probe_queue_lens(replicas, 0)


def call_method(pending_request: Any) -> str:
    """The deployment method a pending request calls."""
    return pending_request.metadata.call_method


def internal_request_id(pending_request: Any) -> str:
    """The id Serve gives a pending request (the one ``on_request_completed`` is given)."""
    return pending_request.metadata.internal_request_id


def serve_controller() -> Any:
    """Serve's controller actor, by Serve's own names for it: no public API gives code in
    the proxy the applications' args and route prefixes (``serve.status()`` has neither).
    Blocking: call it from a thread."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    return ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
