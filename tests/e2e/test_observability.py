"""The Grafana dashboard (deploy/grafana/glm-serve.json) queries only metrics that exist."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx

from tests.support.e2e_cluster import API_KEY, LORA_CONFIGURED, MODEL_NAME, TENANTS, TINY_GLM_NAME, TINY_GLM_PREFIX
from tests.support.paths import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "glm-serve.json"


def _queried_series(path: Path) -> set[str]:
    dashboard = json.loads(path.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    return {name for e in exprs for name in re.findall(r"\b(glm_serve_[a-z_]+)", e)}


def test_every_series_the_dashboard_queries_is_on_metrics(http, base_url):
    queried = _queried_series(DASHBOARD)
    assert {"glm_serve_time_to_first_token_seconds_bucket", "glm_serve_time_per_output_token_seconds_bucket",
            "glm_serve_engine_kv_cache_usage", "glm_serve_engine_prefix_cache_hits_total",
            "glm_serve_routing_decisions_total"} <= queried
    # A stream of several tokens and a refused request, so every kind of series has samples.
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Count to five."}], "max_tokens": 8,
            "ignore_eos": True, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        response.read()
    assert http.post("/v1/chat/completions", json={"model": MODEL_NAME}).status_code == 400

    # The per-tenant refusals come from the tiny GLM application, whose tenants have limits,
    # and the LoRA series from its adapter.
    tenant = {"authorization": f"Bearer {TENANTS['single'][0]}"}
    assert _refused_for_concurrency(base_url, tenant), "the tenant's second concurrent request was not refused"
    adapter = httpx.post(f"{base_url}{TINY_GLM_PREFIX}/v1/completions", timeout=60,
                         headers={"authorization": f"Bearer {API_KEY}"},
                         json={"model": LORA_CONFIGURED, "prompt": "hi", "max_tokens": 2})
    assert adapter.status_code == 200, adapter.text

    deadline = time.monotonic() + 20  # engine series arrive with Serve's next stats poll (1 s here)
    while True:
        text = http.get("/metrics").text
        text += httpx.get(f"{base_url}{TINY_GLM_PREFIX}/metrics", timeout=10,
                          headers={"authorization": f"Bearer {API_KEY}"}).text  # an operator's key
        present = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
        missing = sorted(queried - present)
        if not missing:
            break
        assert time.monotonic() < deadline, f"the dashboard queries series /metrics does not have: {missing}"
        time.sleep(1)


def _refused_for_concurrency(base_url: str, headers: dict[str, str]) -> bool:
    """Hold the tenant's one place with a stream, and be refused a second: True once done.

    Tried again until a deadline: a place an earlier test's stream held may take a moment
    to free, and a router replica that found the shared ledger slow (a busy machine, right
    after other tests) enforces its own share for a while (docs/tenants.md), which lets the
    other router replica admit the second request."""
    url = f"{base_url}{TINY_GLM_PREFIX}/v1/completions"
    body = {"model": TINY_GLM_NAME, "prompt": "hi", "max_tokens": 6000, "ignore_eos": True, "stream": True}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as stream:
            if stream.status_code == 200:  # begun: its place is held until it ends
                second = httpx.post(url, json={**body, "stream": False, "max_tokens": 1}, headers=headers,
                                    timeout=60)
                if second.status_code == 429:
                    return True
        time.sleep(0.5)
    return False


def test_metrics_name_every_tenant_so_only_an_operators_key_reads_them(base_url):
    url = f"{base_url}{TINY_GLM_PREFIX}/metrics"
    tenant = httpx.get(url, timeout=10, headers={"authorization": f"Bearer {TENANTS['single'][0]}"})
    assert tenant.status_code == 403 and tenant.json()["error"]["code"] == "operator_only", tenant.text
    assert "metered" not in tenant.text
    operator = httpx.get(url, timeout=10, headers={"authorization": f"Bearer {API_KEY}"})
    assert operator.status_code == 200 and "glm_serve_tenant_requests_total" in operator.text
    health = httpx.get(f"{base_url}{TINY_GLM_PREFIX}/health", timeout=10,
                       headers={"authorization": f"Bearer {TENANTS['single'][0]}"})
    assert health.json() == {"status": "ok"}, "a tenant's key sees what a load balancer does"
