"""Unit tests of benchmarks/: one file per module, named after it (test_bench.py tests
benchmarks/bench.py, test_workload.py benchmarks/harness/workload.py)."""
