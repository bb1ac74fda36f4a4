"""benchmarks/harness/workload.py: the prompts, a level's summary, and runs combined and compared."""

from __future__ import annotations

from benchmarks.harness.workload import RequestRecord, combine, compare_rounds, prompts, summarize


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
    # TTFTs 10..1000 ms: p50 halfway between the middle two (the median), p99 1 % of the way
    # from the 99th to the 100th value (harness/stats.py: linear interpolation).
    assert row["ttft_p50_ms"] == 505.0
    assert row["ttft_p99_ms"] == 990.1
    assert row["error_samples"] == ["HTTP 500"]


def _run(system: str, c: int, tok_s: float, ttft: float, itl: float | None = 30.0) -> dict:
    return {"system": system, "concurrency": c, "requests": 4, "errors": 0, "output_tokens": 512,
            "wall_s": 20.0, "throughput_tok_s": tok_s, "ttft_p50_ms": ttft, "itl_p50_ms": itl,
            "cpu_by_process": {"raylet": 0.01}}


def test_each_served_run_is_compared_with_the_raw_runs_around_it():
    raw = [_run("raw", 8, 300.0, 40.0, 25.0), _run("raw", 8, 280.0, 44.0, 27.0), _run("raw", 8, 260.0, 48.0, 29.0)]
    served = [_run("glm-serve", 8, 261.0, 70.0, 29.0), _run("glm-serve", 8, 250.0, 66.0, 30.0)]
    out = compare_rounds(raw, served)
    # Round 0 lies between raw runs 0 and 1 (mean 290 tok/s), round 1 between 1 and 2 (270).
    assert out["rounds_throughput_vs_raw"] == [0.9, round(250 / 270, 3)]
    assert out["throughput_vs_raw"] == round((0.9 + 250 / 270) / 2, 3)
    assert out["rounds_ttft_p50_delta_ms"] == [28.0, 20.0] and out["ttft_p50_delta_ms"] == 24.0
    assert out["rounds_itl_p50_vs_raw"] == [round(29 / 26, 3), round(30 / 28, 3)]
    # A single round: its own ratio, no list.
    one = compare_rounds(raw[:2], served[:1])
    assert one["throughput_vs_raw"] == 0.9 and "rounds_throughput_vs_raw" not in one


def test_combine_takes_the_median_of_the_runs_and_reports_drift():
    merged = combine([_run("raw", 1, 20.0, 80.0, None), _run("raw", 1, 22.0, 90.0, None)])
    assert merged["throughput_tok_s"] == 21.0 and merged["ttft_p50_ms"] == 85.0, "the median of two is their mean"
    assert merged["itl_p50_ms"] is None, "a metric no run has stays absent"
    assert merged["runs_tok_s"] == [20.0, 22.0] and merged["drift"] == 0.1
    assert merged["requests"] == 8 and merged["output_tokens"] == 1024, "tokens still match requests x max_tokens"
    assert merged["cpu_by_process_runs"] == [{"raylet": 0.01}] * 2
    three = combine([_run("raw", 1, 20.0, 80.0), _run("raw", 1, 90.0, 10.0), _run("raw", 1, 22.0, 85.0)])
    assert three["throughput_tok_s"] == 22.0 and three["ttft_p50_ms"] == 80.0, "one odd run does not move it"
    single = _run("raw", 64, 400.0, 2000.0)
    assert combine([single]) == single, "a level run once is kept as it is"


def test_a_level_reports_serving_cpu_per_token():
    import asyncio

    from benchmarks.harness.workload import RequestRecord, run_level

    async def one(_):
        return RequestRecord(0.01, 0.02, 10)

    # During the level the router used 0.5 s and the model 9 s, which is not the serving layer's.
    server = iter([{"router": 1.0, "VLLM::Worker": 1.0}, {"router": 1.5, "VLLM::Worker": 10.0, "new": 0.0}])
    summary = asyncio.run(run_level("x", 2, [1, 2], one, server_cpu=lambda: next(server)))
    assert summary["output_tokens"] == 20
    assert 25.0 <= summary["serving_cpu_ms_per_token"] < 30.0  # 0.5 s / 20 tokens, plus our own bit
    assert list(summary["cpu_by_process"])[:2] == ["VLLM::Worker", "router"]
