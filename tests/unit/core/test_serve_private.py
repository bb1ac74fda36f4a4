"""Ray Serve's private names glm-serve uses are all still there (deployments/core/serve_private.py).

A Ray upgrade that moves one fails here, naming it, instead of in production."""

from __future__ import annotations

import ray

from deployments.core import serve_private


def test_every_private_serve_name_glm_serve_uses_exists_in_this_ray():
    missing = serve_private.missing_private_names()
    assert not missing, "Ray Serve moved private names glm-serve uses:\n  " + "\n  ".join(missing)


def test_the_private_names_were_read_in_the_installed_ray():
    assert ray.__version__ == serve_private.RAY_VERSION_CHECKED, (
        f"Ray is {ray.__version__}, deployments/core/serve_private.py was checked against "
        f"{serve_private.RAY_VERSION_CHECKED}: re-read each name in PRIVATE_NAMES in the new Ray's code, "
        "then update RAY_VERSION_CHECKED")


def test_a_moved_name_is_reported_not_ignored(monkeypatch):
    monkeypatch.setattr(serve_private, "PRIVATE_NAMES", serve_private.PRIVATE_NAMES + (
        ("ray.serve._private.constants", "NO_SUCH_NAME", "a test"),
        ("ray.serve._private.no_such_module", "X", "a test"),
    ))
    assert serve_private.missing_private_names() == [
        "ray.serve._private.constants:NO_SUCH_NAME (a test)", "ray.serve._private.no_such_module:X (a test)"]


def test_no_module_outside_the_seam_imports_serves_private_surface():
    from pathlib import Path

    root = Path(__file__).resolve().parents[3] / "deployments"
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if "serve._private" in p.read_text() and p.name != "serve_private.py"]
    assert not offenders, f"Serve's private surface is touched outside deployments/core/serve_private.py: {offenders}"
