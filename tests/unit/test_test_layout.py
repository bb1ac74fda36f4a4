"""The tests' own layout: tests/unit mirrors the packages, one test file per module, named after
it; tests import their helpers from tests/support; every folder of tests is a group that
tests/conftest.py knows, and every test that starts a cluster carries the ``e2e`` marker."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.support.groups import GROUPS, STARTS_A_CLUSTER, TESTS
from tests.support.paths import ROOT

UNIT = TESTS / "unit"
PACKAGES = {"deployments": ROOT / "deployments", "chat_formats": ROOT / "glm_client" / "src" / "chat_formats",
            "glm_client": ROOT / "glm_client" / "src" / "glm_client"}
"""The packages tests/unit mirrors: deployments/<package>/<module>.py is tested in
tests/unit/<package>/test_<module>.py (an entry point, deployments/<module>.py, in
tests/unit/test_<module>.py), chat_formats/<module>.py in tests/unit/chat_formats/test_<module>.py.
A package's __init__.py needs no test file; tests/unit/<package>/test_init.py tests one."""

NOT_MIRRORED = {"benchmarks"}
"""tests/unit/benchmarks/ tests benchmarks/ (and benchmarks/harness/) on its own terms: not checked here."""

WITHOUT_A_TEST_FILE = {
    # Covered only end to end: they need Ray, Serve or vLLM running.
    "deployments/core/named_actor.py": "a named Ray actor; tests/e2e/test_tenants.py, test_routing.py",
    "deployments/engine/backend.py": "vLLM or the simulated engine; tests/e2e, tests/sim",
    "deployments/engine/lifetime.py": "vLLM's engine core dies with its replica; tests/e2e/conftest.py's "
                                      "teardown, tests/e2e/test_replica_failure.py",
    "deployments/engine/lora_fix.py": "a vLLM plug-in; tests/e2e/test_lora_outputs.py against transformers + PEFT",
    "deployments/engine/outputs.py": "vLLM's outputs; tests/e2e/test_openai_api.py, test_openai_features.py, tests/sim",
    "deployments/ingress/deployment.py": "the Serve deployment; every test of tests/e2e",
    "deployments/ingress/chat.py": "an endpoint; tests/e2e/test_openai_api.py, test_openai_features.py",
    "deployments/ingress/completions.py": "an endpoint; tests/e2e/test_openai_api.py, test_openai_features.py",
    "deployments/ingress/models.py": "an endpoint; tests/e2e/test_openai_api.py, test_lora.py",
    "deployments/ingress/tokenize.py": "an endpoint; tests/e2e/test_openai_api.py",
    "deployments/ingress/introspection.py": "/metrics and /openapi.json; tests/e2e/test_observability.py",
    "deployments/routing/placement_service.py": "the placement table's Ray actor; tests/e2e/test_routing.py, "
                                                "tests/cluster/test_multinode.py",
    "deployments/routing/pow2_policy.py": "Serve's own router routes; registered in "
                                          "tests/unit/chat_formats/test_plugins.py, compared in tests/bench",
    # Shared types and the surface of others, exercised by the unit tests of the modules that use them.
    "deployments/config/base.py": "StrictModel: every test of tests/unit/config",
    "deployments/core/errors.py": "APIError: every refusal's test asserts its fields",
    "deployments/core/generation.py": "the router-engine contract's dataclasses: tests/unit/routing, "
                                      "openai_api/test_sse.py, stream_channel",
    "deployments/ingress/metrics.py": "tests/unit/ingress/test_admission.py, test_gate_watch.py, "
                                      "core/test_engine_snapshot.py; tests/e2e/test_observability.py",
    "deployments/openai_api/routes.py": "the proxy gate's reading of a route: tests/unit/test_proxy_gate.py",
    "chat_formats/base.py": "ChatFormat: every format's test, and tests/support/plugins.py's",
    "chat_formats/template.py": "the tokenizer's own template: the ingress tests' contexts; the SmolLM2 app "
                                "in tests/e2e",
}
"""Modules without a tests/unit/.../test_<module>.py, each with where it is tested instead.
Writing a module's test file means taking it off this list (a test below says so)."""

WHOLE_REPOSITORY = {
    "test_layers.py": "the layer rule and import cycles, over every module",
    "test_docstring_paths.py": "every path a docstring names exists",
    "test_test_layout.py": "this file",
    "test_config.py": "the shipped configs, config/*.yaml",
    "test_deploy.py": "the container image, the KubeRay manifest and the dashboard, deploy/",
}
"""Test files at tests/unit's top that test no module: checks over the repository."""


def _modules() -> dict[str, Path]:
    """Every module of PACKAGES but __init__.py: its name in WITHOUT_A_TEST_FILE -> its test file."""
    out = {}
    for name, folder in PACKAGES.items():
        for module in sorted(folder.rglob("*.py")):
            if module.name == "__init__.py":
                continue
            parts = module.relative_to(folder).parts
            tests = UNIT.joinpath(*([] if name == "deployments" else [name]), *parts[:-1])
            key = f"{name}/{'/'.join(parts)}"
            out[key] = tests / f"test_{module.stem}.py"
    return out


def test_every_module_has_its_test_file_or_says_where_it_is_tested():
    modules = _modules()
    missing = sorted(key for key, test in modules.items() if not test.is_file() and key not in WITHOUT_A_TEST_FILE)
    assert not missing, "modules without tests/unit/<package>/test_<module>.py (write one, or add the module " \
                        f"to WITHOUT_A_TEST_FILE saying where it is tested): {missing}"
    stale = sorted(key for key in WITHOUT_A_TEST_FILE if key not in modules or modules[key].is_file())
    assert not stale, f"WITHOUT_A_TEST_FILE names modules that are gone or now have a test file: {stale}"


def test_every_test_file_is_named_after_a_module():
    strays = []
    for test in sorted(UNIT.rglob("test_*.py")):
        parts = test.relative_to(UNIT).parts
        if parts[0] in NOT_MIRRORED:
            continue
        stem = test.stem.removeprefix("test_")
        if len(parts) == 1:
            known = (test.name in WHOLE_REPOSITORY or (ROOT / "deployments" / f"{stem}.py").is_file()
                     or (ROOT / "scripts" / f"{stem}.py").is_file())
        else:
            folder = (PACKAGES[parts[0]].joinpath(*parts[1:-1]) if parts[0] in PACKAGES
                      else PACKAGES["deployments"].joinpath(*parts[:-1]))
            known = (folder / ("__init__.py" if stem == "init" else f"{stem}.py")).is_file()
        if not known:
            strays.append(str(test.relative_to(TESTS)))
    assert not strays, f"test files named after no module (tests/unit mirrors {sorted(PACKAGES)}): {strays}"


def test_every_test_package_can_be_imported_as_one():
    """Test modules are imported as tests.unit.<package>.test_<module>: two test_app.py files
    in folders without __init__.py would collide."""
    folders = {test.parent for test in TESTS.rglob("test_*.py")} | {TESTS / "support"}
    missing = sorted(str(f.relative_to(TESTS)) for f in folders if not (f / "__init__.py").is_file())
    assert not missing, f"test folders without __init__.py: {missing}"


def test_every_folder_of_tests_is_a_group():
    folders = {test.relative_to(TESTS).parts[0] for test in TESTS.rglob("test_*.py")}
    assert folders <= set(GROUPS), f"folders tests/conftest.py does not order: {sorted(folders - set(GROUPS))}"
    assert not list((TESTS / "support").rglob("test_*.py")), "tests/support holds helpers, not tests"


def test_tests_import_helpers_from_tests_support_only():
    """Not from a conftest.py, nor from another test module: what two places share is in tests/support."""
    wrong = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            wrong += [f"{path.relative_to(TESTS)}: {name}" for name in names
                      if name.split(".")[0] == "tests" and not name.startswith("tests.support")]
    assert not wrong, f"imports of tests outside tests.support: {wrong}"


def test_every_test_that_starts_a_cluster_is_marked_e2e():
    """Collected as `pytest -m "not e2e"` collects them: none of them may be left."""
    groups = [str(TESTS / group) for group in sorted(STARTS_A_CLUSTER)]
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:randomly",
                           "-p", "no:cacheprovider", "-m", "not e2e", *groups],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 5 and "no tests collected" in done.stdout and "deselected" in done.stdout, \
        f"tests that start a cluster without the e2e marker, or a collection error:\n{done.stdout[-3000:]}"
