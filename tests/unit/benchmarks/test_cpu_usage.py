"""benchmarks/harness/cpu_usage.py: CPU seconds by process, the model's apart."""

from __future__ import annotations

import os

from benchmarks.harness.cpu_usage import own_cpu_seconds, serving_seconds, session_cpu


def test_session_cpu_counts_this_session_and_serving_leaves_out_the_model():
    sum(i * i for i in range(300_000))  # some CPU of our own to see
    usage = session_cpu(os.getsid(0))
    assert usage and sum(usage.values()) >= own_cpu_seconds() - 0.05
    assert serving_seconds({"VLLM::Worker_TP": 5.0, "VLLM::EngineCor": 1.0, "raylet": 0.5, "python": 0.25}) == 0.75
