"""Start, pause and stop the systems the benchmark compares, each in its own session.

* ``raw``: vLLM's ``AsyncLLM`` in a child process that runs one level per command
  (:mod:`benchmarks.harness.raw_engine`);
* ``vllm-server``: vLLM's own OpenAI server (``python -m vllm.entrypoints.openai.api_server``)
  with the same engine arguments and CPU settings as glm-serve's engine replicas;
* ``glm-serve``: ``serve run`` of the same config file, the way users run it.

Every system stays up for the whole benchmark and takes its turn at each level while
the others are paused (:func:`pause`: SIGSTOP to every process of their session), so
a paused system costs the running one no CPU, and the systems of one level are
measured within a minute of each other.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import httpx
import yaml

from benchmarks.harness.cpu_usage import process_stats, session_pids
from deployments.config import ModelConfig
from deployments.config.base import PROXY_CALLBACK, PROXY_CALLBACK_ENV
from deployments.engine.engine_args import cpu_env

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
"""The repository (benchmarks/harness/ is two folders below it)."""


def pause(session: int) -> None:
    """Stop every process of a system's session (SIGSTOP): it keeps its memory, not the CPU."""
    _signal_session(session, signal.SIGSTOP)


def resume(session: int) -> None:
    """Undo :func:`pause`."""
    _signal_session(session, signal.SIGCONT)


def _signal_session(session: int, sig: signal.Signals) -> None:
    for pid in session_pids(session):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


COMPETING_PREFIXES = ("gcs_server", "raylet", "ray::", "VLLM::")
"""Process names of a Ray cluster (its daemons and workers) and of vLLM's engine processes."""


def competing_processes() -> list[str]:
    """Ray clusters and vLLM engines already running on this machine, as ``"pid name"``.

    They would share the CPU with the systems measured, and skew every number."""
    own = os.getpid()
    return [f"{pid} {name}" for pid, name, _, _ in process_stats()
            if pid != own and name.startswith(COMPETING_PREFIXES)]


def machine_is_quiet(strict: bool) -> bool:
    """False (after saying why on stderr) when a Ray cluster or vLLM engine already runs
    here and ``strict``; without ``strict`` only a warning."""
    busy = competing_processes()
    if busy:
        print(f"{'error' if strict else 'warning'}: a Ray cluster or vLLM engine is already running here "
              f"({', '.join(busy[:6])}{', ...' if len(busy) > 6 else ''}); it would share the CPU with the "
              "systems measured. Stop it first (`ray stop`, or end its `serve run`).", file=sys.stderr)
    return not (busy and strict)


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of those of ``packages`` that are installed."""
    found = {}
    for package in packages:
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


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


def deploy_failed(response: httpx.Response) -> bool:
    """Whether glm-serve's /health says Serve stopped retrying the engine deployment (an
    engine that cannot start): waiting longer is pointless."""
    try:
        return response.json().get("engine_status") == "DEPLOY_FAILED"
    except (ValueError, AttributeError):
        return False


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log}")
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.get(url, timeout=5)
            if response.status_code == 200:
                return time.monotonic() - start
            if deploy_failed(response):
                raise RuntimeError(f"Serve gave up starting the engine replicas (DEPLOY_FAILED); see {log}")
        time.sleep(1)
    raise RuntimeError(f"server not healthy after {timeout_s:.0f} s; see {log}")


def _stop(proc: subprocess.Popen) -> None:
    resume(proc.pid)  # a paused process would not act on SIGTERM
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def vllm_server(model: ModelConfig, log_dir: Path, timeout_s: float = 600,
                extra_args: list[str] = ()) -> Iterator[tuple[str, float, int]]:
    """Yield (base_url, start-up seconds, session id of its processes) of vLLM's own OpenAI
    server (``extra_args``: more of its flags, ``--lora-modules`` say)."""
    port = free_port()
    log = log_dir / "vllm-server.log"
    cmd = [str(BIN / "python"), "-m", "vllm.entrypoints.openai.api_server", *vllm_cli_args(model), *extra_args,
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
        # --address local: a cluster of its own even if one already runs here (`serve run`
        # would otherwise join it and deploy beside, or over, its applications). With the
        # proxy gate, as `glm-serve run` (`make serve`) installs it.
        proc = subprocess.Popen([str(BIN / "serve"), "run", "--address", "local", str(run_config)], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", PROXY_CALLBACK_ENV: PROXY_CALLBACK})
        try:
            base = f"http://127.0.0.1:{port}"
            yield base, _wait_healthy(f"{base}/health", proc, log, timeout_s), proc.pid
        finally:
            _stop(proc)


class RawEngine:
    """The bench's handle on a :mod:`benchmarks.harness.raw_engine` child: one level per call."""

    def __init__(self, proc: subprocess.Popen, results, log: Path):
        self._proc = proc
        self._results = results
        self._log = log

    def run_level(self, concurrency: int, requests: int) -> dict:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"concurrency": concurrency, "requests": requests}) + "\n")
        self._proc.stdin.flush()
        return self.read_line()

    def read_line(self) -> dict:
        """The child's next JSON line: ``{"ready": true}`` first, then one level's summary."""
        line = self._results.readline()
        if not line:
            raise RuntimeError(f"raw engine exited with {self._proc.wait()}; see {self._log}")
        return json.loads(line)


@contextlib.contextmanager
def raw_engine(model: ModelConfig, log_dir: Path, max_tokens: int, seed: int,
               timeout_s: float = 600) -> Iterator[tuple[RawEngine, float, int]]:
    """Yield (the engine's handle, start-up seconds, session id of its processes)."""
    log = log_dir / "raw.log"
    read_fd, write_fd = os.pipe()
    cmd = [str(BIN / "python"), "-m", "benchmarks.harness.raw_engine", "--model-json", model.model_dump_json(),
           "--max-tokens", str(max_tokens), "--seed", str(seed), "--results-fd", str(write_fd)]
    start = time.monotonic()
    # Progress bars pass through on stderr; vLLM logs to stdout, which goes to raw.log.
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=out, text=True, pass_fds=(write_fd,),
                                start_new_session=True, env={**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"})
    os.close(write_fd)
    with os.fdopen(read_fd) as results:
        try:
            if not select.select([results], [], [], timeout_s)[0]:
                raise RuntimeError(f"raw engine not ready after {timeout_s:.0f} s; see {log}")
            engine = RawEngine(proc, results, log)
            engine.read_line()  # {"ready": true}
            yield engine, time.monotonic() - start, proc.pid
        finally:
            resume(proc.pid)
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()  # end of commands: the child shuts its engine down
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                _stop(proc)
