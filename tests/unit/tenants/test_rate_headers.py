"""A refusal for a tenant's limit (deployments/tenants/rate_headers.py): OpenAI's headers and body."""

from __future__ import annotations

from deployments.tenants.rate_headers import RateLimited, duration


def test_headers_are_openais():
    assert [duration(s) for s in (0.02, 1, 1.5, 360)] == ["20ms", "1s", "1.5s", "6m0s"]
    error = RateLimited("noisy", "requests", 60, 1.2, {"x-ratelimit-limit-requests": "60"})
    headers = error.headers()
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("2", "1200")
    assert error.body()["error"]["code"] == "rate_limit_exceeded"
    assert "noisy" in error.message and "60" in error.message
