"""The test groups: a test's group is the first folder under tests/ that holds it.

tests/conftest.py runs the groups in the order of :data:`RUN_ORDER` (its docstring says why)
and marks every test of :data:`STARTS_A_CLUSTER` ``e2e``; tests/unit/test_test_layout.py
checks that every folder of tests is one of them.
"""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

RUN_ORDER = {"unit": 0, "packaging": 1, "bench": 2, "sim": 2, "cluster": 3, "e2e": 4}
"""Every group and its place in a session; bench and sim share theirs (shuffled together)."""
GROUPS = tuple(RUN_ORDER)

STARTS_A_CLUSTER = frozenset({"bench", "sim", "cluster", "e2e"})
"""Groups whose tests start a cluster of their own: Ray (with Serve and vLLM or simulated
engines), or network namespaces with a process per node (tests/cluster/test_link_drop.py)."""


def group_of(path: str | Path) -> str:
    """The first folder under tests/ of ``path`` ("" for a file directly in tests/)."""
    parts = Path(path).resolve().relative_to(TESTS).parts
    return parts[0] if len(parts) > 1 else ""
