"""The composite demo's ``get_client`` (glm_client/src/glm_client/client.py)."""

from __future__ import annotations

import pytest

from glm_client import ServeClient, get_client


def test_get_client_picks_by_type():
    assert isinstance(get_client("http://glm", "serve"), ServeClient)
    with pytest.raises(ValueError, match="unknown client type"):
        get_client("x", "grpc")
