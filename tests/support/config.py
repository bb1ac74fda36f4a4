"""What a config mistake says: the tests of deployments/config/ read the message."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deployments.config import AppConfig


def config_error(args: dict) -> str:
    """The ValidationError that the app builder's ``args`` fail with, as text."""
    with pytest.raises(ValidationError) as info:
        AppConfig.model_validate(args)
    return str(info.value)
