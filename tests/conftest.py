import sys
from pathlib import Path

# Tests import `tests.e2e.conftest` helpers; make the project root importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pytest_addoption(parser):
    parser.addoption("--fuzz-examples", type=int, default=200,
                     help="generated requests per fuzzed endpoint group (make fuzz: 1000)")
