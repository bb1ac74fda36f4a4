"""Every kind of bad input gets its status and OpenAI's error shape, and the service keeps serving."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest

from tests.support.e2e_cluster import MAX_MODEL_LEN, MODEL_NAME, TINY_GLM_NAME, TINY_GLM_PREFIX

GOOD = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
CHAT = "/v1/chat/completions"


def _with(**changes):
    body = dict(GOOD)
    for key, value in changes.items():
        if value is ...:
            body.pop(key)
        else:
            body[key] = value
    return body


CASES = [
    # id, path, body, status, param
    ("missing-messages", CHAT, _with(messages=...), 400, "messages"),
    ("empty-messages", CHAT, _with(messages=[]), 400, "messages"),
    ("unknown-role", CHAT, _with(messages=[{"role": "wizard", "content": "hi"}]), 400, "messages.0.role"),
    ("content-wrong-type", CHAT, _with(messages=[{"role": "user", "content": 5}]), 400, "messages.0.content"),
    ("missing-model", CHAT, _with(model=...), 400, "model"),
    ("unknown-model", CHAT, _with(model="gpt-5"), 404, "model"),
    ("prompt-too-long", CHAT, _with(messages=[{"role": "user", "content": "hello " * (MAX_MODEL_LEN + 100)}]), 400, "messages"),
    ("max-tokens-beyond-context", CHAT, _with(max_tokens=100000), 400, "max_tokens"),
    ("max-tokens-zero", CHAT, _with(max_tokens=0), 400, "max_tokens"),
    ("temperature-too-high", CHAT, _with(temperature=5), 400, "temperature"),
    ("top-p-zero", CHAT, _with(top_p=0), 400, "top_p"),
    ("top-k-negative", CHAT, _with(top_k=-5), 400, "top_k"),
    ("presence-penalty-range", CHAT, _with(presence_penalty=3), 400, "presence_penalty"),
    ("n-too-many", CHAT, _with(n=17), 400, "n"),
    ("top-logprobs-alone", CHAT, _with(top_logprobs=2), 400, "top_logprobs"),
    ("unimplemented-field", CHAT, _with(audio={"voice": "alloy"}), 400, "audio"),
    ("misspelt-field", CHAT, _with(temprature=0.5), 400, "temprature"),
    ("bad-response-format", CHAT, _with(response_format={"type": "xml"}), 400, "response_format.type"),
    ("empty-stop", CHAT, _with(stop=[""]), 400, "stop"),
    ("body-too-large", CHAT, _with(messages=[{"role": "user", "content": "x" * 70000}]), 413, None),
    ("completions-empty-prompt", "/v1/completions", {"model": MODEL_NAME, "prompt": []}, 400, "prompt"),
    ("completions-bad-token", "/v1/completions", {"model": MODEL_NAME, "prompt": [10**9]}, 400, "prompt"),
    ("completions-long-prompt", "/v1/completions", {"model": MODEL_NAME, "prompt": "hi " * (MAX_MODEL_LEN + 100)}, 400, "prompt"),
]


@pytest.mark.parametrize("path,body,status,param", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_bad_input_gets_openai_error_and_service_keeps_serving(http, path, body, status, param, stream):
    response = http.post(path, json={**body, "stream": stream})
    _assert_error_then_good_request(http, response, status, param)


@pytest.mark.parametrize("raw", [b'{"model": ', b"[1, 2]", b"\xff\xfe", b""], ids=["truncated", "array", "binary", "empty"])
def test_body_that_is_not_a_json_object_gets_400(http, raw):
    response = http.post(CHAT, content=raw, headers={"content-type": "application/json"})
    _assert_error_then_good_request(http, response, 400, None)


def _assert_error_then_good_request(http, response, status, param):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param
    assert error["type"] in ("invalid_request_error", "not_found_error")

    good = http.post(CHAT, json=GOOD)
    assert good.status_code == 200, good.text


def test_context_errors_name_the_limit(http):
    response = http.post(CHAT, json=_with(max_tokens=100000))
    assert str(MAX_MODEL_LEN) in response.json()["error"]["message"]
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_unknown_route_and_wrong_method(http):
    assert http.get("/v1/nothing").status_code == 404
    assert http.get("/v1/nothing-else").status_code == 404
    metrics = http.get("/metrics").text
    assert "nothing" not in metrics, "unknown paths must not become metric labels"
    assert 'endpoint="unmatched",status="404"' in metrics
    wrong = http.get(CHAT)
    assert wrong.status_code == 405
    assert "error" in wrong.json()


def test_huge_prompt_does_not_stall_its_engine_replica(glm_http, base_url):
    """A prompt far over the context, just under the body limit, is refused, and while the
    engine replica tokenizes it (seconds) that replica keeps answering other requests:
    tokenizing runs beside its event loop, which also delivers every running stream."""
    chat = f"{TINY_GLM_PREFIX}/v1/chat/completions"
    huge = {"model": TINY_GLM_NAME, "messages": [{"role": "user", "content": "x " * 1_500_000}], "max_tokens": 4}
    small = {"model": TINY_GLM_NAME, "messages": [{"role": "user", "content": "Hi"}]}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        refused = pool.submit(lambda: (httpx.post(base_url + chat, json=huge, timeout=120,
                                                  headers=glm_http.headers), time.monotonic() - started))
        time.sleep(0.5)  # the huge request is in the engine replica's tokenizer by now
        before = time.monotonic()
        answered = glm_http.post("/tokenize", json=small)
        small_s, small_done = time.monotonic() - before, time.monotonic() - started
        response, huge_s = refused.result(timeout=120)
    assert answered.status_code == 200, answered.text
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "context_length_exceeded"
    # Only meaningful if the two overlapped: 3 MB take the tiny tokenizer ~3 s alone here.
    assert small_done < huge_s, f"the huge request ended first ({huge_s:.2f} s), nothing was measured"
    assert small_s < 1.0, f"a small request waited {small_s:.2f} s behind the huge one's tokenizing"
