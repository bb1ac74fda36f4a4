"""Tenants against the real thing: the tiny GLM application's two router replicas, its
tenants file (tests/support/e2e_cluster.py TENANTS), and the openai SDK as the client."""

from __future__ import annotations

import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.support.e2e_cluster import API_KEY, TENANTS, TINY_GLM_NAME, TINY_GLM_PREFIX, write_tenants
from tests.support.waiting import wait_until


def _client(base_url: str, tenant: str, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}{TINY_GLM_PREFIX}/v1", api_key=TENANTS[tenant][0],
                         max_retries=retries, timeout=60)


def _complete(client: openai.OpenAI, max_tokens: int = 2, **extra):
    return client.completions.with_raw_response.create(model=TINY_GLM_NAME, prompt="hi", max_tokens=max_tokens,
                                                       temperature=0, **extra)


def _burst(client: openai.OpenAI, n: int) -> list[object]:
    """``n`` requests at once: each one's raw response, or the error it raised."""
    def one(_):
        try:
            return _complete(client)
        except openai.APIStatusError as exc:
            return exc
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def _hold_the_place(base_url: str):
    """A stream of the tenant ``single`` (one request at a time), begun: it holds the place
    until it is closed, or ends at the tiny application's 10 s deadline."""
    def begun():
        # Back once the response has begun (the router sends its status with the first chunk);
        # nothing is read: the tiny model's tokens may all decode to nothing until the end.
        try:
            return _client(base_url, "single").completions.create(
                model=TINY_GLM_NAME, prompt="hi", max_tokens=6000, stream=True, extra_body={"ignore_eos": True})
        except openai.RateLimitError:  # an earlier test's stream may hold the place a moment longer
            return None
    return wait_until(begun, timeout_s=10, what="a stream of the tenant 'single'", period_s=0.3)


def test_every_response_of_a_limited_tenant_carries_openais_rate_limit_headers(base_url):
    raw = _complete(_client(base_url, "metered"))
    assert raw.headers["x-ratelimit-limit-requests"] == "6000"
    assert raw.headers["x-ratelimit-limit-tokens"] == "1000000"
    assert 0 < int(raw.headers["x-ratelimit-remaining-requests"]) <= 600
    assert 0 < int(raw.headers["x-ratelimit-remaining-tokens"]) <= 100_000
    assert re.fullmatch(r"\d+(\.\d+)?(ms|s)|\d+m\d+s", raw.headers["x-ratelimit-reset-requests"])
    stream = _client(base_url, "metered").chat.completions.with_raw_response.create(
        model=TINY_GLM_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=2, stream=True)
    assert stream.headers["x-ratelimit-limit-requests"] == "6000", "streams carry them too"
    list(stream.parse())


def test_requests_per_minute_hold_across_both_router_replicas(base_url):
    answers = _burst(_client(base_url, "tight"), 16)
    admitted = [a for a in answers if not isinstance(a, Exception)]
    refused = [a for a in answers if isinstance(a, openai.RateLimitError)]
    assert len(admitted) + len(refused) == 16, answers
    # A burst of 6 (60 a minute, 6 s of it) and a refill of one a second while the burst is
    # answered: split per router replica instead of shared, the two would admit 12.
    assert 6 <= len(admitted) <= 9, len(admitted)
    error = refused[0]
    assert error.status_code == 429 and error.body["code"] == "rate_limit_exceeded"
    assert int(error.response.headers["retry-after"]) >= 1 and int(error.response.headers["retry-after-ms"]) > 0
    assert error.response.headers["x-ratelimit-limit-requests"] == "60"
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_the_openai_sdk_waits_as_told_and_then_gets_through(base_url):
    for _ in range(3):  # on a slow machine the bucket may refill between the burst and the call
        answers = _burst(_client(base_url, "retrying"), 10)
        refusals = [a for a in answers if isinstance(a, openai.RateLimitError)]
        assert refusals
        told_s = int(refusals[-1].response.headers["retry-after-ms"]) / 1000
        started = time.monotonic()
        raw = _complete(_client(base_url, "retrying", retries=4))
        assert raw.http_response.status_code == 200
        if raw.retries_taken:
            break
    assert raw.retries_taken >= 1, "every call went through at once: the test never saw a retry"
    # The SDK sleeps what retry-after-ms says (minus nothing), so at least a good part of
    # the last refusal's wait, which the next refusal repeats less what has passed.
    assert time.monotonic() - started >= min(told_s, 1.0) * 0.3, (told_s, time.monotonic() - started)


def test_tokens_per_minute_are_reserved_at_admission(base_url):
    client = _client(base_url, "frugal")
    used = _complete(client, max_tokens=50, extra_body={"ignore_eos": True}).parse().usage
    assert used.total_tokens > 50  # 50 reserved of a burst of 60, then charged what it used
    with pytest.raises(openai.RateLimitError) as info:
        _complete(client, max_tokens=50)
    assert info.value.body["type"] == "tokens"
    assert info.value.response.headers["x-ratelimit-limit-tokens"] == "600"


def test_a_stream_holds_its_tenants_place_until_it_ends(base_url):
    client = _client(base_url, "single")
    stream = _hold_the_place(base_url)
    with pytest.raises(openai.RateLimitError) as info:
        _complete(client)
    assert "requests in flight" in info.value.message
    stream.close()

    def admitted() -> bool:
        try:
            _complete(client)
        except openai.RateLimitError:
            return False
        return True
    wait_until(admitted, timeout_s=10, what="the place freed when the stream ended")


def test_a_model_the_tenant_may_not_call_is_not_found_and_not_listed(base_url):
    client = _client(base_url, "elsewhere")
    with pytest.raises(openai.NotFoundError) as info:
        _complete(client)
    assert info.value.body["code"] == "model_not_found"
    assert [m.id for m in client.models.list()] == []
    listed = _client(base_url, "metered").models.list().data  # the model, then its LoRA adapters
    assert listed[0].id == TINY_GLM_NAME and all(m.parent == TINY_GLM_NAME for m in listed[1:])


def test_a_key_removed_from_the_tenants_file_is_refused_within_seconds(base_url, server):
    client = _client(base_url, "revocable")
    _complete(client)
    write_tenants(server["tenants_file"], [name for name in TENANTS if name != "revocable"])
    try:
        removed = time.monotonic()

        def refused_by_both() -> bool:
            answers = []
            for _ in range(6):  # either router replica may answer: each must have re-read it
                try:
                    _complete(client)
                    answers.append(False)
                except openai.AuthenticationError:
                    answers.append(True)
            return all(answers)
        wait_until(refused_by_both, timeout_s=10, what="the removed key refused", period_s=0.5)
        assert time.monotonic() - removed < 5
    finally:
        write_tenants(server["tenants_file"])

    def accepted() -> bool:
        try:
            return _complete(client).http_response.status_code == 200
        except openai.AuthenticationError:
            return False
    wait_until(accepted, timeout_s=10, what="the key accepted again", period_s=0.5)


def test_a_batch_tenant_is_served_within_its_own_caps(base_url):
    client = _client(base_url, "background")
    assert _complete(client, max_tokens=8).http_response.status_code == 200  # at vLLM's priority 1
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        _complete(client, max_tokens=9)
    with pytest.raises(openai.BadRequestError, match="ignore_eos"):
        _complete(client, max_tokens=4, extra_body={"ignore_eos": True})


def test_usage_and_refusals_per_tenant_in_metrics_and_the_access_log(base_url, server):
    for _ in range(3):
        _complete(_client(base_url, "metered"), max_tokens=3)
    stream = _hold_the_place(base_url)
    with pytest.raises(openai.RateLimitError):
        _complete(_client(base_url, "single"))
    stream.close()
    key = {"authorization": f"Bearer {API_KEY}"}  # an operator's: a tenant's key may not read /metrics
    wanted = [r'glm_serve_tenant_requests_total\{status="200",tenant="metered"\} [1-9]',
              r'glm_serve_tenant_tokens_total\{kind="completion",tenant="metered"\} [1-9]',
              r'glm_serve_tenant_tokens_total\{kind="prompt",tenant="metered"\} [1-9]',
              r'glm_serve_tenant_rate_limited_total\{limit="concurrent",tenant="single"\} [1-9]']
    seen: set[str] = set()

    def all_seen() -> bool:  # each router replica shows its own: scrape until both are covered
        text = httpx.get(f"{base_url}{TINY_GLM_PREFIX}/metrics", headers=key, timeout=10).text
        seen.update(w for w in wanted if re.search(w, text))
        assert "key-metered" not in text
        return len(seen) == len(wanted)
    wait_until(all_seen, timeout_s=20, what=f"per-tenant series: missing {set(wanted) - seen}")
    wait_until(lambda: '"tenant":"metered"' in server["log"].read_text(errors="replace"), timeout_s=20,
               what="the tenant's name in the access log")


def test_a_tenant_cannot_learn_from_the_prefix_cache_what_another_sent(base_url):
    """The oracle: a tenant sends a text it guesses another sent, and reads cached_tokens.
    Each tenant's prompts are salted apart in vLLM's cache (and in prefix routing, so the
    guess goes where the other's would have); a cache group shares on purpose."""
    secret = " ".join(f"{uuid.uuid4().hex[:6]} ledger line {i}." for i in range(120))  # ~10 blocks of 128

    def cached(tenant: str) -> int:
        reply = _client(base_url, tenant).chat.completions.create(
            model=TINY_GLM_NAME, messages=[{"role": "user", "content": secret}], max_tokens=1, temperature=0)
        assert reply.usage.prompt_tokens > 512, reply.usage
        return reply.usage.prompt_tokens_details.cached_tokens

    assert cached("team-a") == 0, "a text nobody sent before"
    assert cached("team-a") > 0, "the tenant's own repeat is served from the cache"
    assert cached("team-b") > 0, "a tenant of the same cache group shares it"
    assert cached("outsider") == 0, "another tenant learns nothing from cached_tokens"
