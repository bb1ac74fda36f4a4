"""Chat formats and routing policies are plug-ins chosen by import path, registered the
same way as the shipped ones (tests/unit/plugins.py stands for a user's module)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from chat_formats import Glm4Format, chat_formats, get_chat_format
from deployments.config import AppConfig
from deployments.config.routing import RoutingConfig
from deployments.routing import registered_policies
from deployments.routing.policy import request_router_config
from deployments.routing.pow2_policy import Pow2Policy
from deployments.routing.prefix_policy import PrefixPolicy
from tests.unit.plugins import BusiestPolicy, ShoutFormat
from tests.unit.routing.helpers import turns
from tests.unit.routing.test_replica_chooser import FakeReplica, make_router, pending

ARGS = {"model": {"model": "/models/x"}}


def test_the_shipped_formats_and_policies_are_registered_like_any_other():
    assert isinstance(chat_formats()["glm4"], Glm4Format) and "template" in chat_formats()
    assert registered_policies()["prefix"] is PrefixPolicy and registered_policies()["pow2"] is Pow2Policy


def test_a_chat_format_from_a_users_module_is_chosen_by_import_path():
    for path in ("tests.unit.plugins:ShoutFormat", "tests.unit.plugins.ShoutFormat"):
        config = AppConfig.model_validate({**ARGS, "model": {**ARGS["model"], "chat_format": path}})
        fmt = get_chat_format(config.model.chat_format)
        assert isinstance(fmt, ShoutFormat)
        assert fmt.render([{"role": "user", "content": "hi"}], None, None) == "user: HI\nassistant:"
    assert "shout" in chat_formats()


@pytest.mark.parametrize("path, says", [
    ("nonesuch", "known: ['glm4'"), ("tests.unit.nonesuch:Fmt", "cannot import"),
    ("tests.unit.plugins:Missing", "has no 'Missing'"), ("tests.unit.plugins:BusiestPolicy", "not a ChatFormat"),
])
def test_a_wrong_chat_format_is_an_error_naming_the_field(path, says):
    with pytest.raises(ValidationError) as error:
        AppConfig.model_validate({**ARGS, "model": {**ARGS["model"], "chat_format": path}})
    assert "model.chat_format" in str(error.value) and says in str(error.value)


def test_a_routing_policy_from_a_users_module_is_chosen_by_import_path_and_routes():
    path = "tests.unit.plugins:BusiestPolicy"
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
    ("round_robin", "'prefix'"), ("tests.unit.plugins:NotAPolicy", "not a RoutingPolicy"),
    ("tests.unit.nonesuch.Policy", "cannot import"),
])
def test_a_wrong_routing_policy_is_an_error_naming_the_field(path, says):
    with pytest.raises(ValidationError) as error:
        AppConfig.model_validate({**ARGS, "engine": {"routing": {"policy": path}}})
    assert "engine.routing.policy" in str(error.value) and says in str(error.value)
    with pytest.raises(ValidationError):
        RoutingConfig(policy=path)
