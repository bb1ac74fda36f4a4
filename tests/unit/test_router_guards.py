"""The router's guards as pure logic: API keys, request limits, the access log line, the
engine's stall rule, and which failures are retried."""

from __future__ import annotations

import json

import pytest
from ray.exceptions import ActorDiedError

from deployments.config import IngressConfig, RequestLimits
from deployments.core.errors import APIError, EngineUnavailable
from deployments.engine.deployment import stalled
from deployments.ingress.access_log import RequestRecord
from deployments.ingress.engine_calls import engine_failure
from deployments.openai_api.request_limits import check_limits
from deployments.openai_api.requests import ChatCompletionRequest
from deployments.stream_channel import ChannelClosed
from deployments.tenants.api_keys import ApiKeys


def test_keys_come_from_the_named_variable_and_file(monkeypatch, tmp_path):
    monkeypatch.setenv("GLM_KEYS", " k1 , k2,,")
    keys_file = tmp_path / "keys"
    keys_file.write_text("# ops team\nk3\n\n")
    keys = ApiKeys("GLM_KEYS", str(keys_file))
    for key in ("k1", "k2", "k3"):
        keys.identify(f"Bearer {key}")
    with pytest.raises(APIError):
        keys.identify("Bearer # ops team")
    assert not ApiKeys(None, None).enabled, "no source configured: no auth"


def test_a_configured_source_without_keys_fails_at_start(monkeypatch, tmp_path):
    monkeypatch.delenv("GLM_KEYS", raising=False)
    with pytest.raises(ValueError, match="GLM_KEYS is unset or empty"):
        ApiKeys("GLM_KEYS", None)
    empty = tmp_path / "keys"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no key"):
        ApiKeys(None, str(empty))
    with pytest.raises(ValueError, match="cannot read"):
        ApiKeys(None, str(tmp_path / "missing"))


def test_a_key_removed_from_the_file_is_refused_within_the_reload_interval_and_a_broken_file_fails_closed(
        monkeypatch, tmp_path):
    monkeypatch.setenv("GLM_KEYS", "from-env")
    now = [0.0]
    keys_file = tmp_path / "keys"
    keys_file.write_text("alice\nbob\n")
    keys = ApiKeys("GLM_KEYS", str(keys_file), clock=lambda: now[0])
    keys.identify("Bearer bob")
    keys_file.write_text("alice\n")  # bob revoked
    keys.identify("Bearer bob")  # not looked at yet: within the interval
    now[0] += 1.0
    with pytest.raises(APIError):
        keys.identify("Bearer bob")
    keys.identify("Bearer alice")
    keys_file.write_text("# emptied by mistake\n")
    now[0] += 1.0
    with pytest.raises(APIError):
        keys.identify("Bearer alice")
    keys.identify("Bearer from-env")  # the environment's keys still work
    keys_file.write_text("carol\n")
    now[0] += 1.0
    keys.identify("Bearer carol")


@pytest.mark.parametrize("header,message", [
    (None, "Missing API key."), ("", "Missing API key."), ("Basic k1", "Missing API key."),
    ("Bearer k", "Incorrect API key provided."), ("Bearer k1x", "Incorrect API key provided."),
])
def test_a_wrong_or_missing_key_is_a_401(header, message, monkeypatch):
    monkeypatch.setenv("GLM_KEYS", "k1,k2")
    with pytest.raises(APIError) as info:
        ApiKeys("GLM_KEYS", None).identify(header)
    assert (info.value.status, info.value.type, info.value.message) == (401, "authentication_error", message)


def test_any_configured_key_is_accepted_as_the_default_tenant(monkeypatch):
    monkeypatch.setenv("GLM_KEYS", "k1,k2")
    keys = ApiKeys("GLM_KEYS", None)
    assert keys.identify("Bearer k2").name == "default"
    assert keys.identify("bearer  k1").name == "default"


def test_the_env_var_name_is_validated():
    with pytest.raises(ValueError, match="api_keys_env"):
        IngressConfig(api_keys_env="MY KEYS")
    with pytest.raises(ValueError, match="first_token_timeout_s"):
        IngressConfig(first_token_timeout_s=700, request_timeout_s=600)


def _chat(**fields):
    return ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                                 **fields})


LIMITS = RequestLimits(max_messages=3, max_prompt_chars=100, max_tools=1, max_tool_chars=200,
                       max_stop_sequences=2, max_stop_chars=5)


@pytest.mark.parametrize("fields,status,param", [
    ({"messages": [{"role": "user", "content": "x"}] * 4}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "x" * 101}]}, 413, "messages"),
    ({"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(2)]}, 400, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "description": "d" * 300}}]}, 400, "tools.0"),
    ({"stop": ["a", "b", "c"]}, 400, "stop"),
    ({"stop": "toolong"}, 400, "stop"),
    ({"max_tokens": 11}, 400, "max_tokens"),
])
def test_each_cap_names_its_field(fields, status, param):
    parsed = _chat(**fields)
    with pytest.raises(APIError) as info:
        check_limits(LIMITS, 10, messages=parsed.messages, tools=parsed.tools, stop=parsed.stop,
                     max_tokens=parsed.output_limit)
    assert (info.value.status, info.value.param) == (status, param)
    assert param.split(".")[0] in info.value.message


def test_a_request_within_the_caps_passes_and_prompts_are_measured_in_characters():
    parsed = _chat(stop=["a", "b"], max_tokens=10)
    check_limits(LIMITS, 10, messages=parsed.messages, tools=parsed.tools, stop=parsed.stop, max_tokens=10)
    check_limits(LIMITS, None, prompt="y" * 100)
    with pytest.raises(APIError, match="prompt: 101 characters"):
        check_limits(LIMITS, None, prompt="y" * 101)


def test_the_access_line_has_the_fields_and_no_text_unless_asked():
    record = RequestRecord(route="/v1/chat/completions", method="POST", request_id="chatcmpl-1",
                           replica="r1", prompt_tokens=5, completion_tokens=7, ttft_s=0.0123)
    entry = json.loads(record.line())
    assert {k: entry[k] for k in ("request_id", "route", "status", "replica", "prompt_tokens",
                                  "completion_tokens", "ttft_ms")} == {
        "request_id": "chatcmpl-1", "route": "/v1/chat/completions", "status": 200, "replica": "r1",
        "prompt_tokens": 5, "completion_tokens": 7, "ttft_ms": 12.3}
    assert entry["duration_ms"] >= 0 and "text" not in entry


def test_only_an_engine_with_work_and_no_output_is_stalled():
    assert stalled(in_flight=3, quiet_s=121, timeout_s=120)
    assert not stalled(in_flight=3, quiet_s=5, timeout_s=120), "busy and producing"
    assert not stalled(in_flight=0, quiet_s=10_000, timeout_s=120), "idle"


def test_a_replica_that_failed_after_accepting_a_request_is_a_503_to_retry_not_a_second_replica():
    for failure in (ActorDiedError(), EngineUnavailable("dead"), ChannelClosed("x"), ConnectionResetError()):
        error = engine_failure(failure)
        assert error.status == 503 and error.headers()["retry-after"], failure
    assert engine_failure(APIError(400, "too long")).status == 400
    assert engine_failure(RuntimeError("bug")).status == 500
