"""Generated and malformed requests against the running service: none may get a 5xx,
no replica may restart, and a good request is answered afterwards.

Requests come from hypothesis strategies that follow the request models' shapes (the
ones /openapi.json publishes) and then break them: wrong types, out-of-range values,
unknown and OpenAI-only fields, deep nesting, odd Unicode, raw bytes that are not JSON, and the
hostile bodies of tests/hostile.py.
``make test`` runs about 200; ``make fuzz`` 1,000 (``--fuzz-examples``).
"""

from __future__ import annotations

import json

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.e2e_cluster import MODEL_NAME, processes_named
from tests.support.hostile import hostile_bodies

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=40))
ANY_JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                        max_leaves=12)

# Valid requests first (max_tokens tiny, so that what the service accepts is cheap to answer) ...
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user", "assistant"]),
                                 "content": st.one_of(st.text(max_size=120), st.lists(
                                     st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=40)}),
                                     max_size=2))})
SAMPLING = {
    "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "top_k": st.integers(-1, 50),
    "min_p": st.floats(0, 1), "seed": st.integers(0, 2**31), "stream": st.booleans(), "n": st.integers(1, 2),
    "stop": st.lists(st.text(min_size=1, max_size=4), max_size=2), "presence_penalty": st.floats(-2, 2),
    "repetition_penalty": st.floats(0.5, 2), "logit_bias": st.dictionaries(
        st.integers(0, 40000).map(str), st.floats(-100, 100), max_size=2),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}), "user": st.text(max_size=8),
}
CHAT = st.fixed_dictionaries(
    {"model": st.just(MODEL_NAME), "messages": st.lists(MESSAGE, min_size=1, max_size=3),
     "max_tokens": st.integers(1, 3)},
    optional={**SAMPLING, "logprobs": st.booleans(), "top_logprobs": st.integers(0, 3),
              "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}, {
                  "type": "json_schema", "json_schema": {"name": "a", "schema": {
                      "type": "object", "properties": {"a": {"type": "boolean"}}}}}])})
COMPLETION = st.fixed_dictionaries(
    {"model": st.just(MODEL_NAME), "prompt": st.one_of(st.text(min_size=1, max_size=100),
                                                       st.lists(st.integers(0, 40000), min_size=1, max_size=8)),
     "max_tokens": st.integers(1, 3)},
    optional={**SAMPLING, "logprobs": st.integers(0, 3)})
TOKENIZE = st.one_of(st.fixed_dictionaries({"model": st.just(MODEL_NAME), "prompt": st.text(max_size=100)}),
                     st.fixed_dictionaries({"model": st.just(MODEL_NAME),
                                            "messages": st.lists(MESSAGE, min_size=1, max_size=3)}))
FIELDS = sorted({"model", "messages", "prompt", "max_tokens", "max_completion_tokens", "tools", "tool_choice",
                 "response_format", "logprobs", "top_logprobs", "n", "stop", "stream", "stream_options",
                 "logit_bias", "audio", "echo", "best_of", "suffix", "metadata", "store", *SAMPLING})


def _mutated(valid: st.SearchStrategy) -> st.SearchStrategy:
    """... then broken: one or two fields (top-level, or of the first message) replaced by
    any JSON at all, or an unknown field added."""
    def top(case):
        body, key, value = case
        return {**body, key: value}

    def nested(case):
        body, key, value = case
        if not isinstance(body.get("messages"), list):
            return {**body, key: value}
        return {**body, "messages": [{**body["messages"][0], key: value}, *body["messages"][1:]]}

    key = st.one_of(st.sampled_from(FIELDS), st.text(max_size=10))
    once = st.one_of(st.tuples(valid, key, ANY_JSON).map(top),
                     st.tuples(valid, st.sampled_from(["role", "content", "name", "tool_calls", "tool_call_id"]),
                               ANY_JSON).map(nested))
    return st.one_of(once, st.tuples(once, key, ANY_JSON).map(top))


def _json_bytes(body) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


ROUTES = {"/v1/chat/completions": CHAT, "/v1/completions": COMPLETION, "/tokenize": TOKENIZE}
REQUEST = st.one_of(
    *[st.tuples(st.just(path), body.map(_json_bytes)) for path, body in ROUTES.items()],
    *[st.tuples(st.just(path), _mutated(body).map(_json_bytes)) for path, body in ROUTES.items()],
    st.tuples(st.sampled_from(sorted(ROUTES)), st.one_of(
        st.binary(max_size=300), st.text(max_size=300).map(str.encode),
        CHAT.map(lambda b: _json_bytes(b)[:-3]))),  # not JSON, or cut short
    # nesting, huge integers, Unicode digits, lone surrogates, raw bytes (tests/hostile.py)
    st.tuples(st.sampled_from(sorted(ROUTES)), hostile_bodies(MODEL_NAME)),
)


def _replica_pids() -> set[int]:
    return {p.pid for p in processes_named("ray::ServeReplica:glm:")}


def test_the_openapi_document_describes_the_request_bodies(http):
    document = http.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    chat = document["components"]["schemas"]["ChatCompletionRequest"]
    assert {"messages", "response_format", "tool_choice", "n", "logprobs"} <= set(chat["properties"])
    assert set(document["paths"]) >= {"/v1/chat/completions", "/v1/completions", "/tokenize"}


def test_generated_and_malformed_requests_never_get_a_5xx(base_url, request):
    examples = request.config.getoption("--fuzz-examples")
    before = _replica_pids()
    statuses: dict[int, int] = {}
    client = httpx.Client(base_url=base_url, timeout=60)

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(REQUEST)
    def send(case):
        path, body = case
        response = client.post(path, content=body, headers={"content-type": "application/json"})
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, f"{path} {body[:300]!r} -> {response.status_code} {response.text[:300]}"
        if response.status_code >= 400:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}

    try:
        send()
    finally:
        client.close()
    print(f"\nFIGURE fuzz: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) >= examples
    assert statuses.get(200, 0) >= examples // 10, "valid requests were generated and served too"
    assert _replica_pids() == before, "a replica restarted"
    good = httpx.post(f"{base_url}/v1/chat/completions", timeout=60, json={
        "model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    assert good.status_code == 200, good.text
