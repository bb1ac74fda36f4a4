"""The tenants file, its keys and its reloading, as pure logic."""

from __future__ import annotations

import pytest

from deployments.cli import main
from deployments.core.errors import APIError
from deployments.tenants.api_keys import ApiKeys
from deployments.tenants.tenants_file import hash_key, parse_tenants


def _file(*tenants: str) -> str:
    return "tenants:\n" + "".join(tenants)


def _tenant(name: str, key: str, extra: str = "") -> str:
    return f"  - name: {name}\n    keys: [{hash_key(key)}]\n{extra}"


def test_a_tenant_is_found_by_its_key_and_keeps_its_limits(tmp_path):
    path = tmp_path / "tenants.yaml"
    path.write_text(_file(_tenant("search", "s-key", "    requests_per_minute: 60\n    priority: batch\n"),
                          _tenant("chat", "c-key")))
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
    path.write_text(_file(_tenant("a", "ka"), _tenant("b", "kb")))
    keys = ApiKeys(None, None, str(path), clock=lambda: now[0])
    path.write_text(_file(_tenant("a", "ka")))
    keys.identify("Bearer kb")  # within the interval: not looked at yet
    now[0] += 1.0
    with pytest.raises(APIError):
        keys.identify("Bearer kb")
    path.write_text(_file(_tenant("a", "ka", "    priority: urgent\n")))  # does not validate
    now[0] += 1.0
    assert keys.identify("Bearer ka").name == "a"  # the last valid version stays
    path.write_text(_file(_tenant("a", "ka", "    requests_per_minute: 5\n")))
    now[0] += 1.0
    assert keys.identify("Bearer ka").requests_per_minute == 5


def test_plain_keys_are_the_default_tenant_beside_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("GLM_KEYS", "plain")
    path = tmp_path / "tenants.yaml"
    path.write_text(_file(_tenant("a", "ka")))
    keys = ApiKeys("GLM_KEYS", None, str(path))
    assert keys.identify("Bearer plain").name == "default"
    assert set(keys.tenants) == {"a", "default"}
    path.write_text(_file(_tenant("default", "kd")))
    with pytest.raises(ValueError, match="'default' is taken"):
        ApiKeys("GLM_KEYS", None, str(path))


@pytest.mark.parametrize("body,message", [
    ("tenants:\n  - name: a\n    keys: [not-a-digest]\n", "tenants[0] (a).keys: Value error, keys[0] is not a SHA-256"),
    (_file(_tenant("a", "k"), _tenant("a", "j")), "tenant 'a' appears twice"),
    (_file(_tenant("a", "k"), _tenant("b", "k")), "one key digest belongs to both 'a' and 'b'"),
    (_file(_tenant("a", "k", "    requests_per_minute: 0\n")), "tenants[0] (a).requests_per_minute"),
    (_file(_tenant("a b", "k")), "a tenant name is 1-63 letters"),
    ("tenants: 3\n", "tenants: Input should be a valid list"),
    ("- a\n", "expected a mapping with a top-level `tenants:` list"),
])
def test_a_bad_file_names_the_tenant_and_field(body, message):
    with pytest.raises(ValueError) as info:
        parse_tenants(body, "t.yaml")
    assert message in str(info.value)


def test_cli_hashes_a_key_and_checks_a_tenants_file(tmp_path, capsys):
    assert main(["hash-key", "secret"]) == 0
    digest = capsys.readouterr().out.strip()
    assert digest == hash_key("secret") and len(digest) == 64
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(_file(_tenant("a", "k")))
    bad.write_text(_file(_tenant("a", "k", "    prioity: batch\n")))
    assert main(["check", str(good)]) == 0
    assert main(["check", str(bad)]) == 2
    assert "tenants[0] (a).prioity: Extra inputs are not permitted" in capsys.readouterr().err


def test_check_validates_the_tenants_file_a_serve_config_names(tmp_path, capsys):
    import yaml

    from deployments.config import AppConfig

    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(_file(_tenant("a", "k", "    priority: urgent\n")))
    args = {"model": {"model": "models/smollm2-135m-instruct"}, "router": {"tenants_file": str(tenants)}}
    AppConfig.model_validate(args)
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"applications": [
        {"name": "glm", "route_prefix": "/", "import_path": "deployments.app:build_app", "args": args}]}))
    assert main(["check", str(config)]) == 2
    err = capsys.readouterr().err
    assert "applications[0].args.router.auth.tenants_file: " in err and "tenants[0] (a).priority" in err
    tenants.write_text(_file(_tenant("a", "k")))
    assert main(["check", str(config)]) == 0
