"""docs/configuration.md is rendered from deployments/config/ (deployments/config/docs.py), and
the checked-in copy is current."""

from __future__ import annotations

import re
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from deployments.config import AppConfig, docs_prose
from deployments.config import docs as config_docs
from tests.support.paths import ROOT

DOC = ROOT / "docs" / "configuration.md"


def _leaves(model: type[BaseModel], path: str) -> list[tuple[str, str]]:
    """(section path, field name) of every non-model field, walked here independently of
    the renderer: a field holding a model (``X`` or ``X | None``) is a section."""
    out = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        members = getattr(annotation, "__args__", ()) or (annotation,)
        sub = next((m for m in members if isinstance(m, type) and issubclass(m, BaseModel)), None)
        out += _leaves(sub, f"{path}.{name}") if sub else [(path, name)]
    return out


def _sections(text: str) -> dict[str, str]:
    """Section path (from its ``## `path` `` heading) -> its text."""
    parts = re.split(r"^## `([^`]+)`$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_checked_in_docs_are_current():
    assert DOC.read_text(encoding="utf-8") == config_docs.render(), (
        "docs/configuration.md is stale: run `make config-docs` (glm-serve config-docs --write "
        "docs/configuration.md) and commit it"
    )


def test_every_leaf_field_of_appconfig_is_documented_in_its_section():
    leaves = _leaves(AppConfig, "args")
    assert len(leaves) > 50  # the walk found the nested models (routing, limits, ...)
    sections = _sections(config_docs.render())
    for section, name in leaves:
        assert section in sections, f"no section for {section}"
        assert f"\n| `{name}` | `" in sections[section], f"{section}.{name} is not in its section's table"
    assert sorted(f"{s}.{n}" for s, n in leaves) == sorted(config_docs.leaf_paths())


def test_sections_follow_the_yaml_nesting():
    paths = [s.path for s in config_docs.sections()]
    assert paths[:2] == ["args", "args.model"]
    for path in ["args.model.streaming", "args.model.cpu", "args.engine", "args.engine.routing",
                 "args.router", "args.router.limits", "args.router.deployment"]:
        assert path in paths
    text = config_docs.render()
    for path in paths:  # GitHub's anchors for the headings, which other docs link to
        assert f"](#{config_docs.anchor(f'`{path}`')})" in text
    assert config_docs.anchor("`args.engine.routing`") == "argsenginerouting"


def test_types_defaults_and_constraints_come_from_the_fields():
    sections = _sections(config_docs.render())
    assert r"| `max_model_len` | `int ≥ 16 \| null` | `null` |" in sections["args.model"]
    assert "| `gpu_memory_utilization` | `0 < float ≤ 1` | `0.9` |" in sections["args.model"]
    assert r'| `dtype` | `"auto" \| "bfloat16" \| "float16" \| "float32"` | `"auto"` |' in sections["args.model"]
    assert "| `model` | `string` | *required* |" in sections["args.model"]
    assert "| `policy` | `string` | `\"pow2\"` |" in sections["args.engine.routing"]
    assert r"| `max_age_s` | `float > 0 \| null` | `null` |" in sections["args.engine.routing"]
    # default_factory is called; the router's own defaults differ from the engine's
    assert "| `ray_actor_options` | `mapping` | `{num_cpus: 0}` |" in sections["args.router.deployment"]
    assert "| `backpressure_config` | `mapping \\| null` | `{status_code: 503, retry_after_s: 1}` |" in (
        sections["args.router.deployment"])
    assert "| `max_ongoing_requests` | `int ≥ 1` | `256` |" in sections["args.engine"]
    assert "| `max_ongoing_requests` | `int ≥ 1` | `2048` |" in sections["args.router.deployment"]


def test_a_field_without_a_description_fails_naming_it():
    class Inner(BaseModel):
        documented: int = Field(default=1, description="Has one.")
        bare: Literal["a", "b"] = "a"

    class Outer(BaseModel):
        inner: Inner = Field(default_factory=Inner, description="A section.")

    with pytest.raises(config_docs.ConfigDocsError, match=r"args\.inner\.bare \(.*Inner\.bare\)"):
        config_docs.render(Outer, notes={})
    with pytest.raises(config_docs.ConfigDocsError, match="no longer exist"):  # prose for a removed section
        config_docs.render(AppConfig, notes={**docs_prose.NOTES, "args.gone": "text"})
