"""The routing config (deployments/config/routing.py): strict, and what Serve is told."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deployments.config.routing import RoutingConfig
from deployments.routing.policy import policy_class, request_router_config
from deployments.routing.prefix_policy import PrefixPolicy

CHOOSERS = {"pow2": "deployments.routing.replica_chooser.Pow2ReplicaChooser",
            "prefix": "deployments.routing.replica_chooser.PolicyReplicaChooser"}


def test_routing_config_is_strict_and_maps_to_serve_options():
    from ray.serve._private.config import DeploymentConfig
    from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter

    pow2 = request_router_config(RoutingConfig(stats_period_s=3))
    assert pow2["request_router_kwargs"] == {} and pow2["request_routing_stats_period_s"] == 3
    cfg = RoutingConfig(policy="prefix", max_load_gap=4)
    options = request_router_config(cfg, adapter_slots=4)
    assert options["request_router_class"] == CHOOSERS["prefix"]
    assert options["request_router_kwargs"]["max_load_gap"] == 4 and options["request_router_kwargs"]["policy"] == "prefix"
    assert "stats_period_s" not in options["request_router_kwargs"]
    # the model's adapter slots ride along, and the chooser takes them out before validating
    kwargs = dict(options["request_router_kwargs"])
    assert kwargs.pop("adapter_slots") == 4
    assert RoutingConfig(**kwargs) == cfg
    # what PolicyReplicaChooser.initialize_state builds from them
    built = policy_class(cfg.policy)(RoutingConfig(**kwargs))
    assert isinstance(built, PrefixPolicy) and built.config == cfg
    # Serve takes both as it takes them from `.options()`, and imports the classes by path.
    for policy in ("pow2", "prefix"):
        config = DeploymentConfig()
        config.request_router_config = request_router_config(RoutingConfig(policy=policy))
        router_class = config.request_router_config.get_request_router_class()
        assert router_class.__name__ == CHOOSERS[policy].rsplit(".", 1)[1]
    from deployments.routing.replica_chooser import Pow2ReplicaChooser
    assert issubclass(Pow2ReplicaChooser, PowerOfTwoChoicesRequestRouter), "pow2 is Serve's default router"
    with pytest.raises(ValidationError):
        RoutingConfig(policy="prefix", max_load_gapp=4)
    with pytest.raises(ValidationError):
        RoutingConfig(policy="round_robin")
    for field in RoutingConfig.model_fields.values():
        assert field.description, "every field is documented"
