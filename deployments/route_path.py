"""The one reading of a request's route, shared by the proxy gate and the ingress, so the
two never disagree on which endpoint a request is for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def route_path(scope: Mapping[str, Any]) -> str:
    """The ASGI ``scope``'s path without the application's ``root_path`` (Serve's route
    prefix), as the endpoints are named: ``/v1/chat/completions`` under any prefix."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path
