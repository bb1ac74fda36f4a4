"""Chat formats are plug-ins chosen by import path (glm_client/src/chat_formats/registry.py),
registered the same way as the shipped ones (tests/support/plugins.py stands for a user's module)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from chat_formats import chat_formats, get_chat_format
from deployments.config import AppConfig
from tests.support.plugins import ShoutFormat

ARGS = {"model": {"model": "/models/x"}}


def test_a_chat_format_from_a_users_module_is_chosen_by_import_path():
    for path in ("tests.support.plugins:ShoutFormat", "tests.support.plugins.ShoutFormat"):
        config = AppConfig.model_validate({**ARGS, "model": {**ARGS["model"], "chat_format": path}})
        fmt = get_chat_format(config.model.chat_format)
        assert isinstance(fmt, ShoutFormat)
        assert fmt.render([{"role": "user", "content": "hi"}], None, None) == "user: HI\nassistant:"
    assert "shout" in chat_formats()


@pytest.mark.parametrize("path, says", [
    ("nonesuch", "known: ['glm4'"), ("tests.unit.nonesuch:Fmt", "cannot import"),
    ("tests.support.plugins:Missing", "has no 'Missing'"), ("tests.support.plugins:BusiestPolicy", "not a ChatFormat"),
])
def test_a_wrong_chat_format_is_an_error_naming_the_field(path, says):
    with pytest.raises(ValidationError) as error:
        AppConfig.model_validate({**ARGS, "model": {**ARGS["model"], "chat_format": path}})
    assert "model.chat_format" in str(error.value) and says in str(error.value)
