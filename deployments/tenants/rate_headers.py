"""OpenAI's rate-limit answers: the ``x-ratelimit-*`` headers on every response of a
limited tenant, and 429 with ``Retry-After`` past a limit.

The headers (OpenAI's names): ``x-ratelimit-limit-requests`` (the tenant's requests per
minute), ``x-ratelimit-remaining-requests`` (how many it may send now, at most a burst
of :data:`~deployments.tenants.buckets.BURST_S` seconds' worth), ``x-ratelimit-reset-requests``
(until the allowance is whole again, as OpenAI writes a duration: ``1s``, ``6m0s``,
``20ms``), and the same three for ``-tokens``. ``remaining`` is this router replica's
view: other replicas' requests since its last word with the ledger are not in it.
"""

from __future__ import annotations

import math

from deployments.core.errors import APIError
from deployments.tenants.buckets import Limits, Standing

_HEADER_KINDS = ("requests", "tokens")
_PER_MINUTE = {"requests": "requests per minute (RPM)", "tokens": "tokens per minute (TPM)",
               "concurrent": "requests in flight"}


def duration(seconds: float) -> str:
    """``seconds`` as OpenAI writes a reset time: ``20ms``, ``1.5s``, ``6m0s``."""
    if round(seconds * 1000) < 1000:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{round(rest):d}s"


def rate_headers(limits: Limits, standing: dict[str, Standing]) -> dict[str, str]:
    """The ``x-ratelimit-*`` headers for the limits the tenant has."""
    headers = {}
    for kind in _HEADER_KINDS:
        if kind not in limits:
            continue
        known = standing.get(kind)
        remaining = known.remaining if known is not None else float(limits[kind])
        reset_s = known.reset_s if known is not None else 0.0
        headers[f"x-ratelimit-limit-{kind}"] = str(limits[kind])
        headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(remaining)))
        headers[f"x-ratelimit-reset-{kind}"] = duration(reset_s)
    return headers


class RateLimited(APIError):
    """429 past one of a tenant's limits, in OpenAI's shape, with ``Retry-After`` (whole
    seconds, rounded up) and ``retry-after-ms``, which the openai SDK prefers."""

    def __init__(self, tenant: str, kind: str, limit: int, wait_s: float, headers: dict[str, str]) -> None:
        wait_s = max(0.001, wait_s)
        super().__init__(
            429, f"Rate limit reached for tenant '{tenant}' on {_PER_MINUTE.get(kind, kind)}: limit {limit}. "
                 f"Please try again in {duration(wait_s)}.",
            "tokens" if kind == "tokens" else "requests", code="rate_limit_exceeded")
        self.kind, self.wait_s, self.rate_headers = kind, wait_s, headers

    def headers(self) -> dict[str, str]:
        return {**self.rate_headers, "retry-after": str(max(1, math.ceil(self.wait_s))),
                "retry-after-ms": str(max(1, math.ceil(self.wait_s * 1000)))}
