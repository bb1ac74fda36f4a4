"""Config validation: every mistake fails at build time and names the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from deployments.config import AppConfig, CpuConfig, ModelConfig

ROOT = Path(__file__).resolve().parents[2]


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


def _error(args: dict) -> str:
    with pytest.raises(ValidationError) as info:
        AppConfig.model_validate(args)
    return str(info.value)


def test_unknown_field_is_named():
    assert "max_model_length" in _error({"model": {"model": "m", "max_model_length": 5}})
    assert "replicas" in _error({"model": {"model": "m"}, "engine": {"replicas": 2}})


def test_wrong_types_and_ranges_are_named():
    assert "gpu_memory_utilization" in _error({"model": {"model": "m", "gpu_memory_utilization": 1.5}})
    assert "max_ongoing_requests" in _error({"model": {"model": "m"}, "engine": {"max_ongoing_requests": 0}})
    assert "omp_spin_count" in _error({"model": {"model": "m", "cpu": {"omp_spin_count": -1}}})
    assert "model" in _error({})


def test_unknown_ray_actor_option_is_named():
    assert "num_gpu" in _error({"model": {"model": "m"}, "engine": {"ray_actor_options": {"num_gpu": 1}}})


def test_autoscaling_needs_auto_replicas_and_back():
    assert "autoscaling_config" in _error({"model": {"model": "m"}, "engine": {"num_replicas": "auto"}})
    auto = AppConfig.model_validate(
        {"model": {"model": "m"}, "engine": {"num_replicas": "auto", "autoscaling_config": {"max_replicas": 4}}}
    )
    assert auto.engine.serve_options()["autoscaling_config"] == {"max_replicas": 4}


def test_autoscaling_fields_are_checked_against_serves_own():
    # Serve's AutoscalingConfig ignores a misspelt field; here it is an error naming it.
    engine = {"num_replicas": "auto", "autoscaling_config": {"max_replicas": 4, "target_ongoing_request": 64}}
    assert "target_ongoing_request" in _error({"model": {"model": "m"}, "engine": engine})
    engine = {"num_replicas": "auto", "autoscaling_config": {"min_replicas": 5, "max_replicas": 4}}
    assert "min_replicas" in _error({"model": {"model": "m"}, "engine": engine})


def test_gpu_config_autoscales_engines_for_vllm_and_routes_by_prefix():
    config = AppConfig.model_validate(_args("config/serve.yaml"))
    engine = config.engine
    assert engine.routing.policy == "prefix" and config.model.enable_prefix_caching
    scaling = engine.autoscaling_config
    assert engine.num_replicas == "auto" and scaling["min_replicas"] >= 1
    # Serve's default target (2 ongoing) would add a GPU for every third request.
    assert scaling["target_ongoing_requests"] >= 32 and scaling["target_ongoing_requests"] < engine.max_ongoing_requests


def test_engine_kwargs_may_not_shadow_typed_fields():
    assert "max_model_len" in _error({"model": {"model": "m", "engine_kwargs": {"max_model_len": 5}}})


@pytest.mark.parametrize("bad", [[], ["0-"], ["a"], ["0;1"]])
def test_threads_bind_rejects_malformed_core_lists(bad):
    with pytest.raises(ValidationError, match="threads_bind"):
        CpuConfig(threads_bind=bad)


def test_threads_bind_accepts_core_lists():
    assert CpuConfig(threads_bind=["0-3", "4,6", "7"]).threads_bind == ["0-3", "4,6", "7"]


def test_engine_args_carry_typed_fields_and_passthrough():
    model = ModelConfig(model="/m/glm-4", enforce_eager=True, engine_kwargs={"block_size": 32})
    args = model.engine_args()
    assert args["model"] == "/m/glm-4"
    assert args["served_model_name"] == "glm-4"
    assert args["enforce_eager"] is True and args["block_size"] == 32
    assert "max_model_len" not in args, "unset fields keep vLLM's own defaults"


def test_router_defaults_reserve_no_cpu():
    config = AppConfig.model_validate({"model": {"model": "m"}})
    assert config.router.deployment.serve_options()["ray_actor_options"] == {"num_cpus": 0}
    assert config.engine.max_ongoing_requests == 256


def test_the_router_warms_its_engine_handle_unless_the_engines_may_scale_to_zero():
    from deployments.app import build_app

    def app(engine: dict) -> tuple[bool, object]:
        args = {"model": {"model": "m"}, "engine": engine}
        bound = build_app(args)._bound_deployment  # what serve run deploys: the router and its init args
        return AppConfig.model_validate(args).engine.may_scale_to_zero, bound.init_kwargs["warm_engine"]

    assert app({}) == (False, True)
    assert app({"num_replicas": "auto", "autoscaling_config": {"max_replicas": 4}}) == (False, True), \
        "Serve's min_replicas defaults to 1"
    assert app({"num_replicas": "auto", "autoscaling_config": {"min_replicas": 0, "max_replicas": 4}}) == (True, False)


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


def test_serves_proxy_refuses_past_the_routers_bounds_with_retry_after():
    from deployments.app import build_app

    deployment = build_app({"model": {"model": "m"}})._bound_deployment  # the router, as serve run deploys it
    assert deployment.backpressure_config.status_code == 503
    assert deployment.backpressure_config.retry_after_s == 1


def test_backpressure_and_router_bounds_are_checked():
    router = {"deployment": {"backpressure_config": {"status_code": 500}}}
    assert "status_code" in _error({"model": {"model": "m"}, "router": router})
    router = {"deployment": {"backpressure_config": {"retry_after": 1}}}
    assert "retry_after" in _error({"model": {"model": "m"}, "router": router})
    router = {"max_in_flight_requests": 512, "deployment": {"max_ongoing_requests": 512}}
    message = _error({"model": {"model": "m"}, "router": router})
    assert "max_ongoing_requests" in message and "max_in_flight_requests" in message


def test_serves_queues_below_what_a_router_admits_are_refused():
    router = {"max_in_flight_requests": 96}
    message = _error({"model": {"model": "m"}, "engine": {"max_queued_requests": 16}, "router": router})
    assert "engine.max_queued_requests (16)" in message and "max_in_flight_requests (96)" in message
    router = {"max_in_flight_requests": 96, "deployment": {"max_ongoing_requests": 128, "max_queued_requests": 32}}
    assert "router.deployment.max_queued_requests (32)" in _error({"model": {"model": "m"}, "router": router})
    AppConfig.model_validate({"model": {"model": "m"}, "engine": {"max_queued_requests": -1}, "router": router |
                              {"deployment": {"max_ongoing_requests": 128, "max_queued_requests": -1}}})
