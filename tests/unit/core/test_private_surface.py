"""Checking a framework's private names (deployments/core/private_surface.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from deployments.core.private_surface import missing_names, resolve


@dataclass
class Holder:
    field_on_instances: int = 0


def test_a_name_resolves_through_classes_and_dataclass_fields():
    assert resolve("json", "JSONDecoder.decode") is __import__("json").JSONDecoder.decode
    assert resolve(__name__, "Holder.field_on_instances") is Holder
    with pytest.raises(AttributeError):
        resolve("json", "JSONDecoder.no_such")


def test_every_missing_name_is_reported_with_why():
    assert missing_names((("json", "dumps", "fine"), ("json", "nope", "a test"), ("no_such_mod", "x", "gone"))) == [
        "json:nope (a test)", "no_such_mod:x (gone)"]
