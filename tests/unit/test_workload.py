"""Benchmark statistics: the numbers in README come from these functions."""

from __future__ import annotations

from benchmarks.bench import check_targets
from benchmarks.workload import RequestRecord, bracket, prompts, ratios, summarize


def test_prompts_are_seeded():
    assert prompts(5, seed=1) == prompts(5, seed=1)
    assert prompts(5, seed=1) != prompts(5, seed=2)
    assert all(p[0]["role"] == "user" and p[0]["content"] for p in prompts(20))


def test_itl_is_time_per_token_after_the_first():
    assert RequestRecord(ttft_s=0.1, e2e_s=1.1, output_tokens=11).itl_s == 0.1
    assert RequestRecord(0.1, 0.1, 1).itl_s is None
    assert RequestRecord(0, 1, 0, error="x").itl_s is None


def test_summarize_counts_tokens_errors_and_percentiles():
    records = [RequestRecord(0.01 * i, 1.0 + 0.01 * i, 10) for i in range(1, 101)]
    records.append(RequestRecord(0, 0.5, 0, error="HTTP 500"))
    row = summarize("glm-serve", 8, records, wall_s=2.0)
    assert row["requests"] == 101 and row["errors"] == 1
    assert row["output_tokens"] == 1000 and row["throughput_tok_s"] == 500.0
    assert row["ttft_p50_ms"] == 510.0 or row["ttft_p50_ms"] == 500.0
    assert row["ttft_p99_ms"] >= 990.0
    assert row["error_samples"] == ["HTTP 500"]


def test_ratios_and_targets_compare_with_raw_at_the_same_concurrency():
    rows = [
        {"system": "raw", "concurrency": 1, "throughput_tok_s": 30.0, "ttft_p50_ms": 50.0, "itl_p50_ms": 30.0, "errors": 0},
        {"system": "glm-serve", "concurrency": 1, "throughput_tok_s": 29.0, "ttft_p50_ms": 70.0, "itl_p50_ms": 31.0,
         "errors": 0},
        {"system": "raw", "concurrency": 32, "throughput_tok_s": 600.0, "ttft_p50_ms": 90.0, "itl_p50_ms": 40.0,
         "errors": 0},
        {"system": "glm-serve", "concurrency": 32, "throughput_tok_s": 500.0, "ttft_p50_ms": 99.0,
         "itl_p50_ms": 48.0, "errors": 0},
    ]
    ratios(rows)
    assert rows[1]["throughput_vs_raw"] == round(29 / 30, 3)
    assert rows[1]["ttft_p50_delta_ms"] == 20.0
    targets = {name: ok for name, ok, _ in check_targets(rows)}
    assert targets["TTFT p50 at c=1 <= raw + 25 ms"] is True
    assert targets["throughput at c=32 >= 0.90x raw"] is False


def test_bracket_averages_the_runs_before_and_after_and_reports_drift():
    def row(c: int, tok_s: float, ttft: float) -> dict:
        return {"system": "raw", "concurrency": c, "requests": 4, "errors": 0, "output_tokens": 512,
                "wall_s": 20.0, "throughput_tok_s": tok_s, "ttft_p50_ms": ttft, "itl_p50_ms": None}

    merged = bracket([row(1, 20.0, 80.0), row(64, 400.0, 2000.0)], [row(1, 22.0, 90.0)])
    one, sixty_four = merged
    assert one["throughput_tok_s"] == 21.0 and one["ttft_p50_ms"] == 85.0
    assert one["itl_p50_ms"] is None, "a metric neither run has stays absent"
    assert one["runs_tok_s"] == [20.0, 22.0] and one["drift"] == 0.1
    assert one["requests"] == 8 and one["output_tokens"] == 1024, "tokens still match requests x max_tokens"
    assert sixty_four == row(64, 400.0, 2000.0), "a level run only once is kept as it is"


def test_session_cpu_counts_this_session_and_serving_leaves_out_the_model():
    import os

    from benchmarks.cpu_usage import own_cpu_seconds, serving_seconds, session_cpu

    sum(i * i for i in range(300_000))  # some CPU of our own to see
    usage = session_cpu(os.getsid(0))
    assert usage and sum(usage.values()) >= own_cpu_seconds() - 0.05
    assert serving_seconds({"VLLM::Worker_TP": 5.0, "VLLM::EngineCor": 1.0, "raylet": 0.5, "python": 0.25}) == 0.75


def test_a_level_reports_serving_cpu_per_token():
    import asyncio

    from benchmarks.workload import RequestRecord, run_level

    async def one(_):
        return RequestRecord(0.01, 0.02, 10)

    # During the level the router used 0.5 s and the model 9 s, which is not the serving layer's.
    server = iter([{"router": 1.0, "VLLM::Worker": 1.0}, {"router": 1.5, "VLLM::Worker": 10.0, "new": 0.0}])
    summary = asyncio.run(run_level("x", 2, [1, 2], one, server_cpu=lambda: next(server)))
    assert summary["output_tokens"] == 20
    assert 25.0 <= summary["serving_cpu_ms_per_token"] < 30.0  # 0.5 s / 20 tokens, plus our own bit
    assert list(summary["cpu_by_process"])[:2] == ["VLLM::Worker", "router"]
