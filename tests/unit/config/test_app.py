"""The app builder's ``args``, whole (deployments/config/app.py): every mistake fails at build time
and names the field."""

from __future__ import annotations

from deployments.config import AppConfig
from tests.support.config import config_error


def test_unknown_field_is_named():
    assert "max_model_length" in config_error({"model": {"model": "m", "max_model_length": 5}})
    assert "replicas" in config_error({"model": {"model": "m"}, "engine": {"replicas": 2}})


def test_wrong_types_and_ranges_are_named():
    assert "gpu_memory_utilization" in config_error({"model": {"model": "m", "gpu_memory_utilization": 1.5}})
    assert "max_ongoing_requests" in config_error({"model": {"model": "m"}, "engine": {"max_ongoing_requests": 0}})
    assert "omp_spin_count" in config_error({"model": {"model": "m", "cpu": {"omp_spin_count": -1}}})
    assert "model" in config_error({})


def test_serves_queues_below_what_a_router_admits_are_refused():
    router = {"max_in_flight_requests": 96}
    message = config_error({"model": {"model": "m"}, "engine": {"max_queued_requests": 16}, "router": router})
    assert "engine.max_queued_requests (16)" in message and "max_in_flight_requests (96)" in message
    router = {"max_in_flight_requests": 96, "deployment": {"max_ongoing_requests": 128, "max_queued_requests": 32}}
    assert "router.deployment.max_queued_requests (32)" in config_error({"model": {"model": "m"}, "router": router})
    AppConfig.model_validate({"model": {"model": "m"}, "engine": {"max_queued_requests": -1}, "router": router |
                              {"deployment": {"max_ongoing_requests": 128, "max_queued_requests": -1}}})
