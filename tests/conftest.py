import sys
from pathlib import Path

import pytest

# The project root on sys.path: tests import their helpers from `tests.support`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.groups import RUN_ORDER, STARTS_A_CLUSTER, group_of  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--fuzz-examples", type=int, default=200,
                     help="generated requests per fuzzed endpoint group (make fuzz: 1000)")


def pytest_collection_modifyitems(items):
    """Group by the first folder under tests/ (tests/unit/routing/... is unit), and run the
    groups in this order, each kept together in a shuffled session (pytest-randomly shuffles
    first; this sort is stable):

    1. unit: pure logic, no Ray. First, so a broken build fails in seconds, not after the
       e2e start-up.
    2. packaging: the light client built and pip-installed into a fresh virtualenv (5-20 s,
       and the package index for httpx), no Ray. After unit, as the slower of the two; before
       any cluster, whose processes would compete with pip for two cores and skew the
       install's import-time bound.
    3. bench and sim: the benchmark smoke and the simulated-engine app each start a Ray
       cluster of their own and stop it.
    4. cluster: two nodes in network namespaces. They tear their cluster down at the end of
       their module, before the e2e cluster starts: two clusters at once would not fit two
       cores.
    5. e2e: the e2e cluster is a session fixture, torn down only when the session ends: a
       test collected after it would run beside a live Ray cluster and three vLLM engines
       (the benchmark's guard against competing processes then sees them).

    Every test of bench, sim, cluster and e2e starts a cluster, so it carries the ``e2e``
    marker: ``pytest -m "not e2e"`` runs the unit and packaging groups alone. A folder that
    is no group sorts with packaging, before any cluster (tests/unit/test_test_layout.py
    fails on it)."""
    for item in items:
        if group_of(item.path) in STARTS_A_CLUSTER:
            item.add_marker(pytest.mark.e2e)
    items.sort(key=lambda item: RUN_ORDER.get(group_of(item.path), RUN_ORDER["packaging"]))
