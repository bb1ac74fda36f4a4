"""The one reading of a request's route, shared by the proxy gate and the ingress, so the
two never disagree on which endpoint a request is for.

Both read the ASGI scope's decoded ``path``. A request whose raw path hides a query or a
fragment behind percent-encoding (``%3F``, ``%23``), or whose Host header carries a path,
could be read one way here and another by a URL parser elsewhere: it is refused
(:func:`ambiguity`), by the gate and by the router alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_HIDDEN = (b"%3f", b"%23")

GENERATION_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})
"""The routes that generate."""
ADMITTED_ROUTES = GENERATION_ROUTES | {"/tokenize"}
"""Routes that hold a place under router.max_in_flight_requests while they run: each
reaches an engine replica and costs it work in proportion to the input."""
GATE_HEADER = "x-glm-serve-gate"
"""Set by the proxy gate on every request it passes to Serve's proxy (a client's own copy
is dropped), so that the ingress knows whether the gate runs in front of it."""


def route_path(scope: Mapping[str, Any]) -> str:
    """The ASGI ``scope``'s path without the application's ``root_path`` (Serve's route
    prefix), as the endpoints are named: ``/v1/chat/completions`` under any prefix."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


def ambiguity(scope: Mapping[str, Any]) -> str | None:
    """Why the request's target could be read two ways, or None when it cannot."""
    raw = scope.get("raw_path")
    if isinstance(raw, (bytes, bytearray)) and any(hidden in raw.lower() for hidden in _HIDDEN):
        return "the path hides a '?' or '#' behind percent-encoding"
    for name, value in scope.get("headers") or ():
        if name == b"host" and any(c in value for c in (b"/", b"\\", b"?", b"#", b"@")):
            return "the Host header carries more than a host and port"
    return None
