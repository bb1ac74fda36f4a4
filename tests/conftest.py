import sys
from pathlib import Path

# Tests import `tests.e2e.conftest` helpers; make the project root importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pytest_addoption(parser):
    parser.addoption("--fuzz-examples", type=int, default=200,
                     help="generated requests per fuzzed endpoint group (make fuzz: 1000)")


def pytest_collection_modifyitems(items):
    """Unit tests first, then the benchmark smoke and the simulated-engine app (each starts
    a Ray cluster of its own and stops it), then the two-node cluster tests, then the
    end-to-end suite.

    The e2e cluster is a session fixture, torn down only when the session ends: a unit
    test collected after it would run beside a live Ray cluster and three vLLM engines
    (the benchmark's guard against competing processes then sees them). Fast tests
    first also means a broken build fails in seconds, not after the e2e start-up. The
    cluster tests tear their cluster down at the end of their module, before the e2e
    cluster starts: two clusters at once would not fit two cores."""
    order = {"unit": 0, "bench": 1, "sim": 1, "cluster": 2, "e2e": 3}
    items.sort(key=lambda item: order.get(Path(str(item.fspath)).parent.name, 1))
