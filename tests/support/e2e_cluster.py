"""The e2e session's test cluster (tests/e2e/conftest.py starts it): its applications' config,
names, keys, tenants and bounds, and what tests use to look at it.

One Ray cluster on loopback, `serve run` of config/serve-cpu.yaml changed only where a
test needs it, plus a tiny GLM-4 application (tests/support/tiny_glm.py) and an autoscaled
one. The simulated-engine app (tests/sim) reuses its model and process helpers.
"""

from __future__ import annotations

import contextlib
import re
import socket
import sys
import time
from pathlib import Path

import httpx
import psutil
import yaml

from tests.support.paths import ROOT
from tests.support.waiting import wait_until

BIN = Path(sys.executable).parent
MODEL_DIR = ROOT / "models" / "smollm2-135m-instruct"
MODEL_NAME = "smollm2-135m-instruct"
TINY_GLM_NAME = "tiny-glm4"
TINY_GLM_PREFIX = "/tiny-glm"
AUTOSCALE_PREFIX = "/autoscale"
AUTOSCALE_MAX_MODEL_LEN = 512
# The tiny GLM application takes API keys from this variable of the Ray nodes' environment
# (the raylet passes it to every replica), the way an operator would provide them.
API_KEYS_ENV = "GLM_TEST_API_KEYS"
API_KEYS = ("key-one-for-tests", "key-two-for-tests")
API_KEY = API_KEYS[1]
TINY_REQUEST_TIMEOUT_S = 10
ENGINE_MAX_ONGOING = 40
# What one router replica admits: 2 x 40 running and 16 waiting for an engine.
ROUTER_MAX_IN_FLIGHT = 2 * ENGINE_MAX_ONGOING + 16
ROUTER_HEADROOM = 32
STALL_TIMEOUT_S = 15
# Room for the 2,000-token stream of the stalled-client test.
MAX_MODEL_LEN = 2048
CLIENT_SEND_TIMEOUT_S = 5
BODY_TIMEOUT_S = 3
START_TIMEOUT_S = 420
# Tenants of the tiny GLM application (tests/e2e/test_tenants.py): name -> (key, limits).
TENANTS = {
    "metered": ("key-metered", {"requests_per_minute": 6000, "tokens_per_minute": 1_000_000}),
    "tight": ("key-tight", {"requests_per_minute": 60}),  # a burst of 6, then one a second
    "retrying": ("key-retrying", {"requests_per_minute": 60}),
    "frugal": ("key-frugal", {"tokens_per_minute": 600}),  # a burst of 60 tokens
    "single": ("key-single", {"max_concurrent_requests": 1}),
    "elsewhere": ("key-elsewhere", {"models": ["some-other-model"]}),
    "revocable": ("key-revocable", {}),
    "background": ("key-background", {"priority": "batch", "max_tokens_limit": 8, "allow_ignore_eos": False}),
    # Prefix-cache isolation: two apps of one team share a cache group, a third tenant does not.
    "team-a": ("key-team-a", {"cache_group": "team"}),
    "team-b": ("key-team-b", {"cache_group": "team"}),
    "outsider": ("key-outsider", {}),
}


def write_tenants(path: Path, names: list[str] | None = None) -> None:
    """The tenants file of the tiny GLM application: TENANTS (or those of ``names``)."""
    from deployments.tenants.tenants_file import hash_key

    tenants = [{"name": name, "keys": [hash_key(key)], **limits} for name, (key, limits) in TENANTS.items()
               if names is None or name in names]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"tenants": tenants}))
    tmp.replace(path)  # whole or not at all, as an operator's tool would write it


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_named(prefix: str) -> list[psutil.Process]:
    """Processes whose command line starts with ``prefix`` (Ray names a replica's worker
    ``ray::ServeReplica:<app>:<deployment>``, a proxy ``ray::ProxyActor``)."""
    return [p for p in psutil.process_iter(["cmdline"]) if " ".join(p.info["cmdline"] or []).startswith(prefix)]


def vllm_processes() -> list[psutil.Process]:
    """vLLM processes started by engine replicas (descendants of `ray::ServeReplica` workers)."""
    found = []
    for proc in psutil.process_iter(["name"]):
        if (proc.info["name"] or "").startswith("ray::ServeRepli"):
            with contextlib.suppress(psutil.Error):
                found += [c for c in proc.children(recursive=True) if c.name().startswith("VLLM")]
    return found


def log_tail(path: Path, lines: int = 80) -> str:
    """The log's last ``lines`` lines."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def failure_lines(path: Path, lines: int = 60) -> str:
    """The log's error lines (a start-up failure is buried under health-check noise)."""
    found = [line for line in path.read_text(errors="replace").splitlines()
             if any(mark in line for mark in ("ERROR", "Error", "error:", "failed"))]
    return "\n".join(found[-lines:])


def gauge(http: httpx.Client, name: str) -> float:
    """An unlabelled series' value on the /metrics page ``http`` reaches (one router replica's)."""
    match = re.search(rf"^{name} (\S+)$", http.get("/metrics").text, re.M)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def _health(url: str) -> dict:
    try:
        answer = httpx.get(url, timeout=10, headers={"authorization": f"Bearer {API_KEY}"})
        return answer.json() if answer.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return {}


def cluster_gaps(base_url: str) -> list[str]:
    """What the test cluster lacks of what write_test_config deploys (empty: all there):
    each of the main and tiny GLM apps' 2 engine replicas, the tiny GLM app's 2 router
    replicas, every app healthy."""
    gaps = []
    running = _health(f"{base_url}/health").get("engine_replicas_running", 0)
    if running < 2 or len(processes_named("ray::ServeReplica:glm:GLMEngine")) != 2:
        gaps.append(f"glm: {running} of 2 engine replicas running")
    tiny_running = _health(f"{base_url}{TINY_GLM_PREFIX}/health").get("engine_replicas_running", 0)
    if tiny_running < 2 or len(processes_named("ray::ServeReplica:tiny-glm:GLMEngine")) != 2:
        gaps.append(f"tiny-glm: {tiny_running} of 2 engine replicas running")
    if len(processes_named("ray::ServeReplica:tiny-glm:GLMRouter")) != 2:
        gaps.append("tiny-glm: not 2 router replicas")
    for prefix in (TINY_GLM_PREFIX, AUTOSCALE_PREFIX):
        if not _health(f"{base_url}{prefix}/health"):
            gaps.append(f"{prefix}: not healthy")
    return gaps


def wait_for_whole_cluster(base_url: str, timeout_s: float = 240) -> float:
    """Wait until :func:`cluster_gaps` finds nothing missing; the seconds it took."""
    started = time.monotonic()

    def whole() -> bool:
        gaps = cluster_gaps(base_url)
        assert not gaps, gaps  # wait_until reports the last one
        return True

    wait_until(whole, timeout_s, "the test cluster whole again")
    return time.monotonic() - started


LORA_CONFIGURED = "glm-configured"
"""The tiny GLM's adapter named in model.lora.adapters (made before the app starts)."""


LORA_RANK = 8
"""The tiny GLM's max_lora_rank: an adapter of rank 16 cannot be loaded."""


def make_glm_adapter(tiny_glm_dir: Path, out: Path, rank: int = LORA_RANK, seed: int = 1) -> Path:
    """A PEFT LoRA adapter on the tiny GLM's attention and MLP projections, as GLM-4's
    fine-tuning recipes make them for the -hf checkpoints."""
    from benchmarks.harness.lora_adapters import GLM_TARGETS, make_adapter

    return make_adapter(tiny_glm_dir, out, rank, seed, GLM_TARGETS)


def write_test_config(path: Path, port: int, tiny_glm_dir: Path, tenants_file: Path,
                      adapters_dir: Path | None = None) -> dict:
    """config/serve-cpu.yaml with 2 GPU-pinned engine replicas, each bound to its own core,
    plus a tiny GLM-4 application under /tiny-glm."""
    config = yaml.safe_load((ROOT / "config" / "serve-cpu.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    args = config["applications"][0]["args"]
    args["model"]["model"] = str(MODEL_DIR)
    args["model"]["max_model_len"] = MAX_MODEL_LEN
    args["model"]["cpu"] = {"threads_bind": ["0", "1"], "kvcache_space_gib": 1}
    # Small bounds, so that a test can fill them: 2 x 40 requests run, 16 more wait in the
    # router replica, the rest are refused at once. Serve's queues are as large as what the
    # router admits, as in the shipped config (Serve counts a request as queued while it
    # picks a replica, so a smaller queue would refuse part of a burst the router admitted).
    # A short stall timeout and frequent health checks, so a test can stall an engine.
    args["engine"] = {"num_replicas": 2, "ray_actor_options": {"num_cpus": 1, "num_gpus": 1},
                      "max_ongoing_requests": ENGINE_MAX_ONGOING, "max_queued_requests": ROUTER_MAX_IN_FLIGHT,
                      "stall_timeout_s": STALL_TIMEOUT_S, "health_check_period_s": 2,
                      "routing": {"policy": "prefix", "stats_period_s": 1}}
    # The router refuses past its cap, before reading the body, and Serve's proxy past what
    # the router replica holds and queues. A client that reads nothing is cut within seconds.
    args["router"] = {"max_request_body_bytes": 65536, "max_in_flight_requests": ROUTER_MAX_IN_FLIGHT,
                      "allow_ignore_eos": True, "body_timeout_s": BODY_TIMEOUT_S,
                      "client_send_timeout_s": CLIENT_SEND_TIMEOUT_S,
                      "deployment": {"max_ongoing_requests": ROUTER_MAX_IN_FLIGHT + ROUTER_HEADROOM,
                                     "max_queued_requests": ROUTER_MAX_IN_FLIGHT}}
    # A second application: the tiny GLM-4 look-alike, in GLM-4's chat format. Its tokenizer
    # has no merges (a token per byte), so a tool loop's second turn, with GLM-4's Chinese
    # tool prompt, is ~3,600 tokens: hence the long context.
    config["applications"].append({
        "name": "tiny-glm",
        "route_prefix": TINY_GLM_PREFIX,
        "import_path": "deployments.app:build_app",
        "args": {
            "model": {"model": str(tiny_glm_dir), "served_model_name": TINY_GLM_NAME, "chat_format": "glm4",
                      "scheduling_policy": "priority",  # the batch tenant's requests go in at priority 1
                      "dtype": "float32", "max_model_len": 8192, "enforce_eager": True,
                      "cpu": {"kvcache_space_gib": 1},
                      # one adapter named in the config, the others found in a folder
                      **({"lora": {"adapters": {LORA_CONFIGURED: str(adapters_dir.parent / LORA_CONFIGURED)},
                                   "adapters_dir": str(adapters_dir), "max_loras": 1, "max_cpu_loras": 2,
                                   "max_lora_rank": LORA_RANK}} if adapters_dir else {})},
            # Two engine replicas with prefix routing: LoRA requests go where their adapter is
            # loaded (tests/e2e/test_lora.py).
            "engine": {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0},
                       "routing": {"policy": "prefix", "stats_period_s": 1}},
            # API keys, request caps and short deadlines, each for a test to hit.
            "router": {"api_keys_env": API_KEYS_ENV, "tenants_file": str(tenants_file),
                       "max_tokens_limit": 7000, "allow_ignore_eos": True,
                       # a 3 MB prompt must reach the engine (test_huge_prompt_...)
                       "limits": {"max_messages": 64, "max_stop_sequences": 4, "max_tools": 8,
                                  "max_prompt_chars": 4_000_000},
                       "request_timeout_s": TINY_REQUEST_TIMEOUT_S, "first_token_timeout_s": 8,
                       # two router replicas, so that a test can kill one
                       "deployment": {"num_replicas": 2}},
        },
    })
    # A third: SmolLM2 engines that Serve autoscales from 1 to 2 and back within seconds
    # (tests/e2e/test_autoscaling.py); on CPU, beside the GPU-pinned ones.
    config["applications"].append({
        "name": "autoscale",
        "route_prefix": AUTOSCALE_PREFIX,
        "import_path": "deployments.app:build_app",
        "args": {
            "model": {"model": str(MODEL_DIR), "served_model_name": MODEL_NAME, "dtype": "float32",
                      "max_model_len": AUTOSCALE_MAX_MODEL_LEN, "enforce_eager": True,
                      "cpu": {"kvcache_space_gib": 1}},
            # Its engines share the cores with the main app's: a 448-token stream took 75 s
            # in CI, more than a 60 s grace period, and was cut at 447 tokens.
            "engine": {"num_replicas": "auto", "ray_actor_options": {"num_cpus": 0},
                       "max_ongoing_requests": 8, "graceful_shutdown_timeout_s": 300,
                       "autoscaling_config": {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 2,
                                              "target_ongoing_requests": 2, "metrics_interval_s": 1,
                                              "look_back_period_s": 2, "upscale_delay_s": 1,
                                              "downscale_delay_s": 8}},
            "router": {"max_request_body_bytes": 65536, "allow_ignore_eos": True},
        },
    })
    path.write_text(yaml.safe_dump(config))
    return config
