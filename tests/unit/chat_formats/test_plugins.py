"""One plug-in registry type (glm_client/src/chat_formats/plugins.py) for chat formats and routing
policies: the shipped ones are registered like any other."""

from __future__ import annotations

from chat_formats import Glm4Format, chat_formats
from deployments.routing import registered_policies
from deployments.routing.pow2_policy import Pow2Policy
from deployments.routing.prefix_policy import PrefixPolicy


def test_the_shipped_formats_and_policies_are_registered_like_any_other():
    assert isinstance(chat_formats()["glm4"], Glm4Format) and "template" in chat_formats()
    assert registered_policies()["prefix"] is PrefixPolicy and registered_policies()["pow2"] is Pow2Policy
