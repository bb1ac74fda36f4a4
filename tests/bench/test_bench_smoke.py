"""`make bench --smoke`: all three systems start, take their turns at each level, and write results.

The benchmark starts a Ray cluster of its own (`serve run --address local`), so the
smoke run passes in any test order, also while the e2e session's cluster is up (then
it only warns: the smoke run checks that the benchmark works, not its numbers).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_smoke_runs_every_system_and_writes_results(tmp_path):
    # Two rounds and a compared config (the shipped one again, as glm-serve:same): the
    # smoke run keeps the A/B path working, at the cost of one more glm-serve start.
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--smoke", "--rounds", "2",
         "--compare", "same=config/serve-cpu.yaml", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    data = json.loads((tmp_path / "results.json").read_text())
    served = ("vllm-server", "glm-serve", "glm-serve:same")
    systems = {(r["system"], r["concurrency"]) for r in data["results"]}
    assert systems == {(s, c) for s in ("raw", *served) for c in (1, 4)}
    assert data["meta"]["level_plan"] == ["raw", *served, "raw", *served[::-1], "raw"]
    assert data["meta"]["compare"] == {"glm-serve:same": "config/serve-cpu.yaml"}
    raw_1 = next(r for r in data["results"] if r["system"] == "raw" and r["concurrency"] == 1)
    assert len(raw_1["runs_tok_s"]) == 3, "raw runs first and after every round"
    for row in data["results"]:
        assert row["errors"] == 0, row
        assert row["output_tokens"] == row["requests"] * 16, row
        assert row["ttft_p50_ms"] > 0
        if row["system"] != "raw":
            assert len(row["runs_tok_s"]) == 2 and len(row["rounds_throughput_vs_raw"]) == 2, row
    assert (tmp_path / "results.png").stat().st_size > 10_000
    assert "glm-serve:same" in proc.stdout and "vs raw" in proc.stdout


def test_bench_transport_carries_every_chunk_both_ways(tmp_path):
    out = tmp_path / "transport.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_transport", "--chunks", "400", "--rounds", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = {r["mode"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"ray", "channel", "zmq-curve"}
    for row in rows.values():
        assert row["chunks"] == 400 and row["chunks_per_s"] > 0 and row["engine_side_us_per_chunk"] > 0


def test_bench_routing_smoke_runs_each_workload_on_each_variant_and_pools_rounds(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_routing", "--smoke", "--rounds", "2", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    data = json.loads((tmp_path / "routing.json").read_text())
    assert data["meta"]["variants"] == {"pow2": {"policy": "pow2"}, "prefix": {"policy": "prefix"}}
    workloads = ("multi-turn", "unique", "hot-system")
    assert {(r["workload"], r["variant"], r["round"]) for r in data["rounds"]} == {
        (w, v, n) for w in workloads for v in ("pow2", "prefix") for n in (1, 2)}
    # Each round, each workload's first variant rotates.
    firsts = [r["variant"] for i, r in enumerate(data["rounds"]) if i % 2 == 0]
    assert firsts == ["pow2", "prefix", "pow2", "prefix", "pow2", "prefix"]
    for workload in workloads:
        for variant, row in data["results"][workload].items():
            rounds = [r for r in data["rounds"] if r["workload"] == workload and r["variant"] == variant]
            assert row["errors"] == 0 and row["requests"] == sum(r["requests"] for r in rounds), row
            assert abs(row["wall_s"] - sum(r["wall_s"] for r in rounds)) < 0.02
    assert data["results"]["multi-turn"]["prefix"]["same_replica_as_previous_turn"] is not None
    for row in data["rounds"]:  # a gap needs two replicas, and the smoke's 2 users may share one
        assert (row["in_flight_gap"] is None) == (len(row["replica_requests"]) < 2), row
    assert (tmp_path / "routing.png").stat().st_size > 10_000


def test_bench_tenants_smoke_runs_every_phase_and_writes_results(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_tenants", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    data = json.loads((tmp_path / "tenants.json").read_text())
    assert list(data["results"]) == ["1x", "10x", "flood, priority on", "flood, priority off"]
    ten = data["results"]["10x"]
    assert ten["quiet"]["by_status"] == {"200": ten["quiet"]["sent"]}, ten
    assert ten["noisy"]["by_status"].get("429", 0) > 0, "10x its limits: most of noisy's requests are refused"
    for phase in ("flood, priority on", "flood, priority off"):
        assert data["results"][phase]["flood"]["by_status"].get("200", 0) > 0
    assert (tmp_path / "tenants.png").stat().st_size > 10_000


def test_bench_lora_smoke_runs_each_phase_on_both_routings_and_counts_loads(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_lora", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    data = json.loads((tmp_path / "lora.json").read_text())
    results = data["results"]
    assert list(results) == ["zipf16, prefix", "zipf16, pow2", "base", "one adapter"]
    for name, row in results.items():
        assert row["by_status"] == {"200": row["requests"]}, (name, row)
    assert results["zipf16, prefix"]["adapter_loads"] >= 1 and results["zipf16, pow2"]["adapter_loads"] >= 1
    assert results["base"]["adapter_loads"] == 0
    assert (tmp_path / "lora.png").stat().st_size > 10_000


def test_bench_scale_smoke_runs_serve_and_the_simulator_on_one_workload(tmp_path):
    out = tmp_path / "scale.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_scale", "--replicas", "4", "--sim-replicas", "8",
         "--policies", "prefix", "--users-per-replica", "3", "--warmup", "5", "--duration", "10",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    data = json.loads(out.read_text())
    served = data["results"]["serve"]["4"]["prefix"]
    assert served["requests"] > 0 and served["failed"] == 0 and served["tokens_per_s"] > 0, served
    assert served["hit_rate"] > 0, "the simulated engines' prefix-cache counters reached /metrics"
    assert set(data["results"]["simulator"]) == {"4", "8"}
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_bench_ceiling_smoke_measures_the_table_and_a_chunk_size(tmp_path):
    out = tmp_path / "ceiling.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_ceiling", "--chunks", "4", "--streams", "8", "--seconds", "4",
         "--table-routers", "4", "--table-replicas", "8", "--controller-replicas", "0", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = json.loads(out.read_text())["results"]
    assert results["placement_table"]["calls_per_s"] > 0
    (chunk,) = results["proxy"]
    assert chunk["tokens_per_s"] > 0 and chunk["failed"] == 0 and chunk["cores"]["proxy"] > 0
