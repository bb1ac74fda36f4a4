"""The access log line (deployments/ingress/access_log.py)."""

from __future__ import annotations

import json

from deployments.ingress.access_log import RequestRecord


def test_the_access_line_has_the_fields_and_no_text_unless_asked():
    record = RequestRecord(route="/v1/chat/completions", method="POST", request_id="chatcmpl-1",
                           replica="r1", prompt_tokens=5, completion_tokens=7, ttft_s=0.0123)
    entry = json.loads(record.line())
    assert {k: entry[k] for k in ("request_id", "route", "status", "replica", "prompt_tokens",
                                  "completion_tokens", "ttft_ms")} == {
        "request_id": "chatcmpl-1", "route": "/v1/chat/completions", "status": 200, "replica": "r1",
        "prompt_tokens": 5, "completion_tokens": 7, "ttft_ms": 12.3}
    assert entry["duration_ms"] >= 0 and "text" not in entry
