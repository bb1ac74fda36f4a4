"""Serve's options for the engine and router deployments (deployments/config/serve_options.py):
checked against Serve's own, with defaults for glm-serve."""

from __future__ import annotations

from deployments.config import AppConfig
from tests.support.config import config_error


def test_unknown_ray_actor_option_is_named():
    assert "num_gpu" in config_error({"model": {"model": "m"}, "engine": {"ray_actor_options": {"num_gpu": 1}}})


def test_autoscaling_needs_auto_replicas_and_back():
    assert "autoscaling_config" in config_error({"model": {"model": "m"}, "engine": {"num_replicas": "auto"}})
    auto = AppConfig.model_validate(
        {"model": {"model": "m"}, "engine": {"num_replicas": "auto", "autoscaling_config": {"max_replicas": 4}}}
    )
    assert auto.engine.serve_options()["autoscaling_config"] == {"max_replicas": 4}


def test_autoscaling_fields_are_checked_against_serves_own():
    # Serve's AutoscalingConfig ignores a misspelt field; here it is an error naming it.
    engine = {"num_replicas": "auto", "autoscaling_config": {"max_replicas": 4, "target_ongoing_request": 64}}
    assert "target_ongoing_request" in config_error({"model": {"model": "m"}, "engine": engine})
    engine = {"num_replicas": "auto", "autoscaling_config": {"min_replicas": 5, "max_replicas": 4}}
    assert "min_replicas" in config_error({"model": {"model": "m"}, "engine": engine})


def test_router_defaults_reserve_no_cpu():
    config = AppConfig.model_validate({"model": {"model": "m"}})
    assert config.router.deployment.serve_options()["ray_actor_options"] == {"num_cpus": 0}
    assert config.engine.max_ongoing_requests == 256
