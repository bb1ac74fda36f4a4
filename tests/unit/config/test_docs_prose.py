"""The prose of docs/configuration.md (deployments/config/docs_prose.py): its example is a valid config."""

from __future__ import annotations

import yaml

from deployments.config import AppConfig, docs_prose


def test_the_example_is_a_valid_app_config():
    app = yaml.safe_load(docs_prose.EXAMPLE)["applications"][0]
    assert app["import_path"] == "deployments.app:build_app"
    AppConfig.model_validate(app["args"])
