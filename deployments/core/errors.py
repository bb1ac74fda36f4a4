"""Errors in OpenAI's shape, for the router and the engine alike.

    Exception
    ├── APIError            a response in OpenAI's error shape: a request the router or an
    │                       engine refused (4xx), or a failure mapped to 5xx. Raised anywhere,
    │                       written to the client in one place (IngressDeployment.__call__,
    │                       or an SSE error event once a stream has begun).
    └── EngineUnavailable   an engine replica's vLLM engine died; the router answers 503
                            and Serve's health check replaces the replica.

Both cross the Ray hop from an engine replica as exceptions that are still instances of
their class (Ray re-raises a remote exception as a subclass of its type), and keep
their fields because every field is in ``args``.
"""

from __future__ import annotations

import math
from typing import Any


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The one place the OpenAI error shape is written."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


RETRY_AFTER_S = 1
"""Seconds a client is told to wait (``Retry-After``) before retrying a 503."""


class APIError(Exception):
    """An answer in OpenAI's error shape, with its HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, retry_after_s: float | None = None):
        # All in args, so it pickles across Ray (an engine replica's refusal reaches the ingress whole).
        super().__init__(status, message, type, param, code, retry_after_s)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.retry_after_s = retry_after_s
        """Seconds until a retry may succeed (a 429's Retry-After); None: the status's default."""

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"

    def body(self) -> dict[str, Any]:
        """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
        return error_body(self.message, self.type, self.param, self.code)

    def headers(self) -> dict[str, str]:
        """The headers its status calls for: Retry-After on 503 (and where a wait is known),
        WWW-Authenticate on 401."""
        if self.retry_after_s is not None:
            return {"retry-after": str(max(1, math.ceil(self.retry_after_s))),
                    "retry-after-ms": str(max(1, math.ceil(self.retry_after_s * 1000)))}
        if self.status == 503:
            return {"retry-after": str(RETRY_AFTER_S)}
        if self.status == 401:
            return {"www-authenticate": "Bearer"}
        return {}


def model_not_found(message: str) -> APIError:
    """404 ``model_not_found``, OpenAI's answer for a ``model`` it does not serve."""
    return APIError(404, message, "not_found_error", param="model", code="model_not_found")


def overloaded() -> APIError:
    """The refusal past a router's cap, from a router replica or Serve's proxy alike."""
    return APIError(503, "The service is overloaded; retry later.", "service_unavailable", code="overloaded")


class EngineUnavailable(Exception):
    """The replica's vLLM engine has failed; Serve's health check will replace the replica."""
