"""The shipped configs (config/*.yaml): each validates, as glm-serve's config and as Serve's, and
carries the bounds and settings its deployment needs."""

from __future__ import annotations

import pytest
import yaml

from deployments.config import AppConfig
from tests.support.paths import ROOT


def _args(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())["applications"][0]["args"]


@pytest.mark.parametrize("path", ["config/serve.yaml", "config/serve-cpu.yaml", "config/serve-sim.yaml"])
def test_shipped_configs_validate(path):
    config = AppConfig.model_validate(_args(path))
    assert config.engine.max_ongoing_requests >= 64, "Serve's default of 5 starves vLLM's batching"
    assert config.router.deployment.max_ongoing_requests >= config.engine.max_ongoing_requests


@pytest.mark.parametrize("path", ["config/serve.yaml", "config/serve-cpu.yaml", "config/serve-sim.yaml"])
def test_shipped_configs_are_valid_serve_configs(path):
    """`serve run` validates the whole file with Serve's own schema before it deploys."""
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(yaml.safe_load((ROOT / path).read_text()))


def test_cpu_config_slows_serves_control_loop_through_the_config_file():
    """Set in the file, not the Makefile: it must reach the controller of any `serve run`."""
    from benchmarks.bench import controller_env

    env = controller_env(yaml.safe_load((ROOT / "config/serve-cpu.yaml").read_text()))
    assert float(env["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"]) == 1.0


@pytest.mark.parametrize("path", ["config/serve.yaml", "config/serve-cpu.yaml", "config/serve-sim.yaml"])
def test_shipped_configs_send_proxy_traffic_over_serves_grpc_transport(path):
    """The proxy reads the switch at start-up, from the environment the controller gives it."""
    from benchmarks.bench import controller_env

    assert controller_env(yaml.safe_load((ROOT / path).read_text()))["RAY_SERVE_PROXY_USE_GRPC"] == "1"


def test_gpu_config_pins_one_engine_per_gpu_and_stops_on_glm4_tokens():
    config = AppConfig.model_validate(_args("config/serve.yaml"))
    assert config.engine.ray_actor_options["num_gpus"] == 1
    assert config.model.max_model_len == 8192
    assert {151329, 151336, 151338} <= set(config.model.stop_token_ids)
    assert config.model.chat_format == "glm4"


def test_gpu_config_autoscales_engines_for_vllm_and_routes_by_prefix():
    config = AppConfig.model_validate(_args("config/serve.yaml"))
    engine = config.engine
    assert engine.routing.policy == "prefix" and config.model.enable_prefix_caching
    scaling = engine.autoscaling_config
    assert engine.num_replicas == "auto" and scaling["min_replicas"] >= 1
    # Serve's default target (2 ongoing) would add a GPU for every third request.
    assert scaling["target_ongoing_requests"] >= 32 and scaling["target_ongoing_requests"] < engine.max_ongoing_requests


@pytest.mark.parametrize("path", ["config/serve.yaml", "config/serve-cpu.yaml", "config/serve-sim.yaml"])
def test_shipped_configs_bound_the_router_above_its_stream_cap(path):
    """Past the router's stream cap the router refuses; past its replica's bounds, Serve's
    proxy. Serve's queues hold what a router admits (Serve counts a request as queued while
    it picks a replica: a smaller queue would refuse part of a burst the router admitted)."""
    config = AppConfig.model_validate(_args(path))
    router = config.router
    assert router.max_in_flight_requests < router.deployment.max_ongoing_requests
    assert router.deployment.max_queued_requests > 0
    assert config.engine.max_queued_requests >= router.max_in_flight_requests
    assert router.deployment.max_queued_requests >= router.max_in_flight_requests
