"""The engine's arguments (deployments/engine/engine_args.py): per-replica CPU settings and
generation-config defaults."""

from __future__ import annotations

import json
import os

import pytest

from deployments.config import CpuConfig
from deployments.engine.engine_args import apply_cpu_settings, cpu_env, stop_and_sampling_defaults


@pytest.fixture()
def clean_env(monkeypatch):
    for name in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE", "GOMP_SPINCOUNT"):
        # setenv first: monkeypatch records nothing when it deletes a variable that is not
        # set, and then would not remove what the test sets. A leaked "8-15" core list once
        # reached the e2e cluster (started from this process) and broke an engine's start.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_each_local_rank_gets_its_own_cores(clean_env):
    cpu = CpuConfig(threads_bind=["0-7", "8-15"], kvcache_space_gib=4)
    assert apply_cpu_settings(cpu, 1) == {"VLLM_CPU_OMP_THREADS_BIND": "8-15", "VLLM_CPU_KVCACHE_SPACE": "4"}
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "8-15"


def test_omp_spin_count_reaches_libgomp_through_the_environment(clean_env):
    assert apply_cpu_settings(CpuConfig(omp_spin_count=10000), 0) == {"GOMP_SPINCOUNT": "10000"}
    assert os.environ["GOMP_SPINCOUNT"] == "10000"
    assert cpu_env(CpuConfig(omp_spin_count=0), 0) == {"GOMP_SPINCOUNT": "0"}  # 0 is a value, not "unset"


def test_a_rank_without_cores_fails_clearly(clean_env):
    with pytest.raises(ValueError, match="local rank 2 has no model.cpu.threads_bind entry"):
        apply_cpu_settings(CpuConfig(threads_bind=["0", "1"]), 2)


def test_no_cpu_settings_touch_nothing(clean_env):
    assert apply_cpu_settings(CpuConfig(), 0) == {}
    assert "VLLM_CPU_OMP_THREADS_BIND" not in os.environ


def test_generation_config_gives_eos_ids_and_sampling_defaults(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [151329, 151336, 151338], "temperature": 0.8, "top_p": 0.8, "do_sample": True}
    ))
    eos, defaults = stop_and_sampling_defaults(str(tmp_path), trust_remote_code=False)
    assert eos == {151329, 151336, 151338}
    assert defaults == {"temperature": 0.8, "top_p": 0.8}


def test_missing_generation_config_gives_nothing(tmp_path):
    assert stop_and_sampling_defaults(str(tmp_path), trust_remote_code=False) == (set(), {})
