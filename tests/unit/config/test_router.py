"""The router's config (deployments/config/router.py): its names, deadlines and bounds are checked."""

from __future__ import annotations

import pytest

from deployments.config import IngressConfig
from tests.support.config import config_error


def test_the_env_var_name_is_validated():
    with pytest.raises(ValueError, match="api_keys_env"):
        IngressConfig(api_keys_env="MY KEYS")
    with pytest.raises(ValueError, match="first_token_timeout_s"):
        IngressConfig(first_token_timeout_s=700, request_timeout_s=600)


def test_backpressure_and_router_bounds_are_checked():
    router = {"deployment": {"backpressure_config": {"status_code": 500}}}
    assert "status_code" in config_error({"model": {"model": "m"}, "router": router})
    router = {"deployment": {"backpressure_config": {"retry_after": 1}}}
    assert "retry_after" in config_error({"model": {"model": "m"}, "router": router})
    router = {"max_in_flight_requests": 512, "deployment": {"max_ongoing_requests": 512}}
    message = config_error({"model": {"model": "m"}, "router": router})
    assert "max_ongoing_requests" in message and "max_in_flight_requests" in message
