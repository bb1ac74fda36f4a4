"""The container image and the KubeRay manifest agree with the configs they ship."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from deployments.cli import check_file, main
from deployments.config import AppConfig
from deployments.config.base import PROXY_CALLBACK, PROXY_CALLBACK_ENV

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kuberay" / "rayservice.yaml"


def _documents() -> list[dict]:
    return list(yaml.safe_load_all(MANIFEST.read_text()))


def _manifest() -> dict:
    [service] = [d for d in _documents() if d["kind"] == "RayService"]
    return service


def _ray_pin() -> str:
    return re.search(r'"ray\[serve\]==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)


def test_the_rayservice_carries_config_serve_yaml_and_passes_both_schemas():
    manifest = _manifest()
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert serve_config == yaml.safe_load((ROOT / "config" / "serve.yaml").read_text()), \
        "serveConfigV2 must be config/serve.yaml: change both together"
    assert check_file(str(MANIFEST)) == ([], [], 1)
    assert main(["check", str(MANIFEST)]) == 0


def test_a_broken_serve_config_inside_a_manifest_is_named(tmp_path, capsys):
    manifest = _manifest()
    manifest["spec"]["serveConfigV2"] = manifest["spec"]["serveConfigV2"].replace("max_model_len:", "max_model_lenn:")
    bad = tmp_path / "rayservice.yaml"
    bad.write_text(yaml.safe_dump(manifest))
    assert main(["check", str(bad)]) == 2
    assert "spec.serveConfigV2: applications[0].args.model.max_model_lenn" in capsys.readouterr().err


def test_gpus_only_on_workers_one_per_pod_and_the_model_on_every_gpu_pod():
    cluster = _manifest()["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == _ray_pin()
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert not any("nvidia.com/gpu" in str(c.get("resources")) for c in head["template"]["spec"]["containers"])
    [workers] = cluster["workerGroupSpecs"]
    [container] = workers["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"

    app = AppConfig.model_validate(yaml.safe_load(_manifest()["spec"]["serveConfigV2"])["applications"][0]["args"])
    assert app.engine.ray_actor_options["num_gpus"] == 1
    # No path that exists only where `serve run` started: an absolute path on a volume
    # that every GPU pod mounts.
    assert Path(app.model.model).is_absolute()
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert any(Path(app.model.model).is_relative_to(m) for m in mounts), (app.model.model, mounts)
    # The autoscaler may add pods up to what Serve's autoscaling may ask for.
    assert workers["maxReplicas"] >= app.engine.autoscaling_config["max_replicas"]
    assert workers["minReplicas"] <= app.engine.autoscaling_config["min_replicas"]
    # The proxy gate in every node's Serve proxy; API keys from a Secret, only where router
    # replicas run: the workers, since the head offers no CPU to schedule them on.
    head_env = {e["name"]: e for e in head["template"]["spec"]["containers"][0]["env"]}
    worker_env = {e["name"]: e for e in container["env"]}
    assert head_env[PROXY_CALLBACK_ENV]["value"] == worker_env[PROXY_CALLBACK_ENV]["value"] == PROXY_CALLBACK
    assert app.router.deployment.ray_actor_options.get("num_cpus", 1) > 0 and head["rayStartParams"]["num-cpus"] == "0"
    assert app.router.auth.api_keys_env not in head_env
    assert "secretKeyRef" in worker_env[app.router.auth.api_keys_env]["valueFrom"]


def test_the_manifest_is_locked_down_and_check_refuses_one_without_ray_auth(tmp_path, capsys):
    cluster = _manifest()["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token"}
    [policy] = [d for d in _documents() if d["kind"] == "NetworkPolicy"]
    label = policy["spec"]["podSelector"]["matchLabels"]
    pods = [cluster["headGroupSpec"]["template"], *(w["template"] for w in cluster["workerGroupSpecs"])]
    assert all(p["metadata"]["labels"].items() >= label.items() for p in pods), "every Ray pod is covered"
    open_to_all = [rule for rule in policy["spec"]["ingress"] if "from" not in rule]
    assert [p["port"] for rule in open_to_all for p in rule["ports"]] == [8000], "only Serve's HTTP port is public"
    assert main(["check", str(MANIFEST)]) == 0

    documents = _documents()
    del documents[0]["spec"]["rayClusterConfig"]["authOptions"]
    unlocked = tmp_path / "rayservice.yaml"
    unlocked.write_text(yaml.safe_dump_all(documents))
    assert main(["check", str(unlocked)]) == 2
    assert "spec.rayClusterConfig.authOptions.mode" in capsys.readouterr().err
    unlocked.write_text(yaml.safe_dump(_manifest()))  # without its NetworkPolicy: passes, with a warning
    assert main(["check", str(unlocked)]) == 0
    assert "no NetworkPolicy" in capsys.readouterr().err


def test_the_image_is_rays_own_at_the_pinned_version_with_the_gpu_extra():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(_ray_pin())}-py311-gpu$", dockerfile, re.M)
    # glm-serve and the client distribution it requires, in one pip command (pip takes
    # glm-serve-client from ./glm_client, not from an index).
    assert "pip install --no-cache-dir ./glm_client '.[gpu]'" in dockerfile
    assert "COPY --chown=ray:users glm_client ./glm_client" in dockerfile
    image = _manifest()["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert image == f"glm-serve:{version}"
    # Every package pyproject.toml installs is copied into the image.
    packages = re.search(r"include = \[([^\]]+)\]", (ROOT / "pyproject.toml").read_text()).group(1)
    for package in re.findall(r'"(\w+)"', packages):
        assert f"COPY --chown=ray:users {package} ./{package}" in dockerfile, package


def test_the_grafana_dashboard_covers_the_operators_questions_with_series_glm_serve_defines():
    import json

    dashboard = json.loads((ROOT / "deploy" / "grafana" / "glm-serve.json").read_text())
    titles = " / ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("requests per second", "errors", "time to first token", "inter-token", "running and waiting",
                  "kv cache", "prefix-cache hit rate", "routing decisions"):
        assert topic in titles, topic
    source = (ROOT / "deployments" / "ingress" / "metrics.py").read_text()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for name in {n for e in exprs for n in re.findall(r"\b(glm_serve_[a-z_]+)", e)}:
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        assert f'"{base}"' in source, f"{name}: not a series deployments/ingress/metrics.py defines"
