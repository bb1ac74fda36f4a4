"""One structured JSON line per request, written by the router when the request ends.

The line holds what an operator needs to follow a request (id, route, status, engine
replica, token counts, time to first token, duration) and never its text: prompts,
completions and API keys stay out of every log unless ``router.log_prompts`` is on.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("glm_serve.access")


def setup() -> None:
    """Send access lines, bare, to this process's stderr. Idempotent."""
    to_stderr(logger, "%(message)s")


def to_stderr(target: logging.Logger, fmt: str) -> None:
    """Send ``target``'s INFO and above, formatted with ``fmt``, to this process's stderr
    and nowhere else, whatever Ray made of the root logger (Ray keeps each replica's and
    proxy's stderr in its log files, and ``serve run`` prints it). Idempotent."""
    if not target.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(fmt))
        target.addHandler(handler)
        target.setLevel(logging.INFO)
        target.propagate = False


@dataclass(slots=True)
class RequestRecord:
    """What the router learns about one request while serving it."""

    route: str
    method: str
    start: float = field(default_factory=time.perf_counter)
    request_id: str | None = None
    status: int = 200
    replica: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    error_code: str | None = None
    caller: Any = None
    """The caller's :class:`~deployments.tenants.tenants_file.Tenant`; None before the key is
    checked, and on open routes."""
    adapter: str | None = None
    """The LoRA adapter the request named as its model; None: the base model."""
    ticket: Any = None
    """The request's hold on its tenant's limits (deployments/tenants/quota_service.py)."""
    admitted: bool = False
    """Counted against ``router.max_in_flight_requests`` until the request ends."""
    finished: bool = False
    text: dict[str, Any] | None = None
    """Prompt and completion text; only filled when ``router.log_prompts`` is on."""

    @property
    def tenant(self) -> str | None:
        """The caller's tenant by name (never by key), as logs and metrics name it."""
        return None if self.caller is None else self.caller.name

    @property
    def batch(self) -> bool:
        """Whether the caller's tenant has batch priority."""
        return self.caller is not None and self.caller.batch

    def line(self) -> str:
        """The access-log line of this record, as JSON."""
        entry: dict[str, Any] = {
            "event": "request", "request_id": self.request_id, "tenant": self.tenant, "method": self.method,
            "route": self.route,
            "status": self.status, "replica": self.replica, "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens, "completion_tokens": self.completion_tokens,
            "ttft_ms": None if self.ttft_s is None else round(self.ttft_s * 1000, 1),
            "duration_ms": round((time.perf_counter() - self.start) * 1000, 1),
        }
        if self.adapter is not None:
            entry["adapter"] = self.adapter
        if self.error_code:
            entry["error_code"] = self.error_code
        if self.text is not None:
            entry["text"] = self.text
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
