"""The simulated engine's profiles (deployments/config/engine_profile.py)."""

from __future__ import annotations

import pytest

from deployments.config.engine_profile import load_profile


def test_a_scaled_profile_takes_that_many_times_as_long_for_every_kind_of_step():
    profile = load_profile("cpu-smollm2-135m")
    slow = profile.scaled(3.0)
    for args in ((0, 1, 0), (500, 0, 0, 500 * 499 / 2), (0, 8, 8000)):
        assert slow.step_seconds(*args) == pytest.approx(3.0 * profile.step_seconds(*args))


def test_shipped_profiles_load():
    for name in ("cpu-smollm2-135m", "gpu-h100-glm4-9b"):
        profile = load_profile(name)
        assert profile.step_seconds(0, 1, 0) > 0
    with pytest.raises(ValueError, match="shipped"):
        load_profile("no-such-profile")
