"""Routing policies are plug-ins chosen by import path (deployments/routing/policy.py),
registered the same way as the shipped ones (tests/support/plugins.py stands for a user's module)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from deployments.config import AppConfig
from deployments.config.routing import RoutingConfig
from deployments.routing import registered_policies
from deployments.routing.policy import request_router_config
from tests.support.plugins import BusiestPolicy
from tests.support.routing import FakeReplica, make_router, pending, turns

ARGS = {"model": {"model": "/models/x"}}


def test_a_routing_policy_from_a_users_module_is_chosen_by_import_path_and_routes():
    path = "tests.support.plugins:BusiestPolicy"
    config = AppConfig.model_validate({**ARGS, "engine": {"routing": {"policy": path, "options": {"x": 1}}}})
    options = request_router_config(config.engine.routing)
    assert options["request_router_class"] == "deployments.routing.replica_chooser.PolicyReplicaChooser"
    assert options["request_router_kwargs"]["policy"] == path and registered_policies()["busiest"] is BusiestPolicy

    async def scenario() -> None:
        router, deployment_id = make_router(**options["request_router_kwargs"])
        assert isinstance(router.policy, BusiestPolicy) and router.policy.config.options == {"x": 1}
        fakes = [FakeReplica(f"r{i}", deployment_id) for i in range(3)]
        router.update_replicas(fakes)
        await asyncio.sleep(0.05)
        router.replica_queue_len_cache.update(fakes[1].replica_id, 9)
        request = pending([turns(1, 1)[0]], "generate", "b1")
        ranks = await router.choose_replicas(list(router.curr_replicas.values()), request)
        assert ranks[0] == [fakes[1]]
        router.on_request_routed(request, fakes[1].replica_id, None)
        assert router.decision_counts() == {"busiest": 1}

    asyncio.run(scenario())


@pytest.mark.parametrize("path, says", [
    ("round_robin", "'prefix'"), ("tests.support.plugins:NotAPolicy", "not a RoutingPolicy"),
    ("tests.unit.nonesuch.Policy", "cannot import"),
])
def test_a_wrong_routing_policy_is_an_error_naming_the_field(path, says):
    with pytest.raises(ValidationError) as error:
        AppConfig.model_validate({**ARGS, "engine": {"routing": {"policy": path}}})
    assert "engine.routing.policy" in str(error.value) and says in str(error.value)
    with pytest.raises(ValidationError):
        RoutingConfig(policy=path)
