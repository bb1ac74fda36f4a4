"""A router replica's admission with tenants: batch requests fill only their share."""

from __future__ import annotations

import pytest

from deployments.core.errors import APIError
from deployments.ingress.access_log import RequestRecord
from deployments.ingress.admission import Admission
from deployments.ingress.metrics import IngressMetrics
from deployments.tenants.tenants_file import Tenant, hash_key


def _record(batch: bool) -> RequestRecord:
    caller = Tenant(name="t", keys=[hash_key("t")], priority="batch" if batch else "interactive")
    return RequestRecord(route="/v1/chat/completions", method="POST", caller=caller)


def test_batch_requests_are_refused_first_when_the_replica_is_nearly_full():
    admission = Admission(8, IngressMetrics(), batch_share=0.75)
    held = [_record(batch=True) for _ in range(6)]
    for record in held:
        admission.admit(record)
    with pytest.raises(APIError) as info:
        admission.admit(_record(batch=True))
    assert info.value.status == 503 and info.value.headers()["retry-after"]
    interactive = [_record(batch=False) for _ in range(2)]
    for record in interactive:
        admission.admit(record)  # the last quarter is theirs
    with pytest.raises(APIError):
        admission.admit(_record(batch=False))
    for record in interactive + held[:1]:
        admission.finish(record)
    admission.admit(_record(batch=True))  # 5 in flight: below the batch share again


def test_usage_is_counted_per_tenant_by_name():
    metrics = IngressMetrics()
    admission = Admission(None, metrics)
    record = _record(batch=False)
    admission.admit(record)
    record.prompt_tokens, record.completion_tokens, record.cached_tokens = 10, 5, 4
    admission.finish(record)
    refused = _record(batch=False)
    refused.status, refused.error_code = 429, "rate_limit:tokens"
    admission.finish(refused)
    text = metrics.render().decode()
    assert 'glm_serve_tenant_requests_total{status="200",tenant="t"} 1.0' in text
    assert 'glm_serve_tenant_tokens_total{kind="cached",tenant="t"} 4.0' in text
    assert 'glm_serve_tenant_rate_limited_total{limit="tokens",tenant="t"} 1.0' in text
    assert '"tenant": "t"' in record.line().replace('":"', '": "')
