"""Start and stop the served systems the benchmark compares, each on a loopback port.

* ``vllm-server``: vLLM's own OpenAI server (``python -m vllm.entrypoints.openai.api_server``)
  with the same engine arguments and CPU settings as glm-serve's engine replicas.
* ``glm-serve``: ``serve run`` of the same config file, the way users run it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import yaml

from deployments.config import ModelConfig
from deployments.engine import cpu_env

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_cli_args(model: ModelConfig) -> list[str]:
    """ModelConfig -> vLLM server flags (``--enforce-eager``, ``--no-enable-prefix-caching``...)."""
    args: list[str] = []
    for key, value in model.engine_args().items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args += [flag, str(value)]
    return args


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=5).status_code == 200:
                return time.monotonic() - start
        time.sleep(1)
    raise RuntimeError(f"server not healthy after {timeout_s:.0f} s; see {log}")


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def vllm_server(model: ModelConfig, log_dir: Path, timeout_s: float = 600) -> Iterator[tuple[str, float, int]]:
    """Yield (base_url, start-up seconds, session id of its processes) of vLLM's own OpenAI server."""
    port = free_port()
    log = log_dir / "vllm-server.log"
    cmd = [str(BIN / "python"), "-m", "vllm.entrypoints.openai.api_server", *vllm_cli_args(model),
           "--host", "127.0.0.1", "--port", str(port), "--disable-uvicorn-access-log"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **cpu_env(model.cpu, 0)})
        try:
            base = f"http://127.0.0.1:{port}"
            yield base, _wait_healthy(f"{base}/health", proc, log, timeout_s), proc.pid
        finally:
            _stop(proc)


@contextlib.contextmanager
def glm_serve(config_path: Path, log_dir: Path, timeout_s: float = 600) -> Iterator[tuple[str, float, int]]:
    """Yield (base_url, start-up seconds, session id of its processes) of ``serve run`` on
    ``config_path`` moved to a free port. The Ray cluster ``serve run`` starts (gcs, raylet,
    Serve's proxy and controller, the replicas and their vLLM processes) is in that session."""
    config = yaml.safe_load(config_path.read_text())
    port = free_port()
    config["http_options"] = {**config.get("http_options", {}), "host": "127.0.0.1", "port": port}
    args = config["applications"][0]["args"]
    args["model"]["model"] = str(Path(args["model"]["model"]).resolve())
    run_config = log_dir / "glm-serve.yaml"
    run_config.write_text(yaml.safe_dump(config))
    log = log_dir / "glm-serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(BIN / "serve"), "run", str(run_config)], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
        try:
            base = f"http://127.0.0.1:{port}"
            yield base, _wait_healthy(f"{base}/health", proc, log, timeout_s), proc.pid
        finally:
            _stop(proc)
