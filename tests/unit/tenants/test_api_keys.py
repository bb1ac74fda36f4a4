"""API keys (deployments/tenants/api_keys.py): keys from a variable, a keys file and a tenants
file, who they identify, and reloading when a file changes."""

from __future__ import annotations

import os

import pytest

from deployments.core.errors import APIError
from deployments.tenants.api_keys import ApiKeys
from deployments.tenants.tenants_file import hash_key
from tests.support.tenants import tenant_entry, tenants_yaml


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


def test_a_tenant_is_found_by_its_key_and_keeps_its_limits(tmp_path):
    path = tmp_path / "tenants.yaml"
    path.write_text(tenants_yaml(tenant_entry("search", "s-key", "    requests_per_minute: 60\n    priority: batch\n"),
                          tenant_entry("chat", "c-key")))
    keys = ApiKeys(None, None, str(path))
    search = keys.identify("Bearer s-key")
    assert (search.name, search.requests_per_minute, search.batch) == ("search", 60, True)
    assert keys.identify("Bearer c-key").name == "chat"
    with pytest.raises(APIError) as info:
        keys.identify(f"Bearer {hash_key('s-key')}")  # the digest is not a key
    assert info.value.status == 401


def test_a_removed_key_is_refused_after_the_reload_interval_and_a_broken_edit_keeps_the_last_valid_file(tmp_path):
    now = [0.0]
    path = tmp_path / "tenants.yaml"
    path.write_text(tenants_yaml(tenant_entry("a", "ka"), tenant_entry("b", "kb")))
    keys = ApiKeys(None, None, str(path), clock=lambda: now[0])
    path.write_text(tenants_yaml(tenant_entry("a", "ka")))
    keys.identify("Bearer kb")  # within the interval: not looked at yet
    now[0] += 1.0
    with pytest.raises(APIError):
        keys.identify("Bearer kb")
    path.write_text(tenants_yaml(tenant_entry("a", "ka", "    priority: urgent\n")))  # does not validate
    now[0] += 1.0
    assert keys.identify("Bearer ka").name == "a"  # the last valid version stays
    path.write_text(tenants_yaml(tenant_entry("a", "ka", "    requests_per_minute: 5\n")))
    now[0] += 1.0
    assert keys.identify("Bearer ka").requests_per_minute == 5


def test_plain_keys_are_the_default_tenant_beside_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("GLM_KEYS", "plain")
    path = tmp_path / "tenants.yaml"
    path.write_text(tenants_yaml(tenant_entry("a", "ka")))
    keys = ApiKeys("GLM_KEYS", None, str(path))
    assert keys.identify("Bearer plain").name == "default"
    assert set(keys.tenants) == {"a", "default"}
    path.write_text(tenants_yaml(tenant_entry("default", "kd")))
    with pytest.raises(ValueError, match="'default' is taken"):
        ApiKeys("GLM_KEYS", None, str(path))


def test_an_edit_of_the_same_size_and_time_is_seen_and_a_broken_file_is_shown_stale(tmp_path):
    now = [0.0]
    stale_flags = []
    path = tmp_path / "tenants.yaml"
    path.write_text(tenants_yaml(tenant_entry("a", "ka", "    requests_per_minute: 5\n")))
    keys = ApiKeys(None, None, str(path), clock=lambda: now[0], on_stale=stale_flags.append)
    stamp = path.stat().st_mtime_ns
    path.write_text(tenants_yaml(tenant_entry("a", "ka", "    requests_per_minute: 6\n")))  # same size
    os.utime(path, ns=(stamp, stamp))  # and the same timestamp (one tick of a coarse clock)
    now[0] += 1.0
    assert keys.identify("Bearer ka").requests_per_minute == 6
    assert keys.stale is None
    path.unlink()  # deleted: the last good version stays, and says so
    now[0] += 1.0
    assert keys.identify("Bearer ka").requests_per_minute == 6
    assert keys.stale is not None and stale_flags[-1] is True
    path.write_text(tenants_yaml(tenant_entry("a", "ka", "    requests_per_minute: 7\n")))
    now[0] += 1.0
    assert keys.identify("Bearer ka").requests_per_minute == 7
    assert keys.stale is None and stale_flags[-1] is False
