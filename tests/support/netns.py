"""A two-node Ray cluster on one machine: each node in its own Linux network namespace.

Layout (all addresses private to this machine, nothing routed beyond it)::

    glm-head  (10.213.0.1) ──veth── (10.213.0.2)  glm-worker     node-to-node traffic
       10.213.1.2                        10.213.2.2
        │ veth                             │ veth
    host 10.213.1.1                    host 10.213.2.1               the test's clients

Ray, Serve's proxies, the routers' stream channels and the vLLM engines of a node all
run inside its namespace, so a request or a token stream between nodes crosses a real
(virtual) interface, and each node's proxy can bind the same port. Needs CAP_NET_ADMIN.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Node:
    netns: str
    ip: str
    """The node's address on the node-to-node link (Ray's node IP)."""
    client_ip: str
    """Its address on its link to the host, where the test's clients reach its proxy."""
    host_ip: str
    host_link: str
    node_link: str


HEAD = Node("glm-head", "10.213.0.1", "10.213.1.2", "10.213.1.1", "glmh-host", "glmh-node")
WORKER = Node("glm-worker", "10.213.0.2", "10.213.2.2", "10.213.2.1", "glmw-host", "glmw-node")
NODES = (HEAD, WORKER)
_PEER_LINKS = ("glmp-head", "glmp-worker")


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ip", *args] if netns is None else ["ip", "netns", "exec", netns, "ip", *args]
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def available() -> str | None:
    """None when network namespaces can be made here, else why not."""
    probe = "glm-probe"
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"cannot create a network namespace: {result.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def up() -> None:
    """Create both namespaces and their links (removing leftovers of an earlier run)."""
    down()
    for node in NODES:
        _ip("netns", "add", node.netns)
        _ip("link", "set", "lo", "up", netns=node.netns)
        _ip("link", "add", node.host_link, "type", "veth", "peer", "name", node.node_link)
        _ip("link", "set", node.node_link, "netns", node.netns)
        _ip("addr", "add", f"{node.host_ip}/24", "dev", node.host_link)
        _ip("link", "set", node.host_link, "up")
        _ip("addr", "add", f"{node.client_ip}/24", "dev", node.node_link, netns=node.netns)
        _ip("link", "set", node.node_link, "up", netns=node.netns)
    head_end, worker_end = _PEER_LINKS
    _ip("link", "add", head_end, "type", "veth", "peer", "name", worker_end)
    for node, end in zip(NODES, _PEER_LINKS, strict=True):
        _ip("link", "set", end, "netns", node.netns)
        _ip("addr", "add", f"{node.ip}/24", "dev", end, netns=node.netns)
        _ip("link", "set", end, "up", netns=node.netns)


def pids(node: Node) -> list[int]:
    result = _ip("netns", "pids", node.netns, check=False)
    return [int(p) for p in result.stdout.split()] if result.returncode == 0 else []


def kill_all(grace_s: float = 15) -> None:
    """Stop every process inside the namespaces (Ray, Serve, vLLM): SIGTERM, then SIGKILL
    what is left after ``grace_s``. `ray stop` would not do: it stops Ray machine-wide."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30)):
        for node in NODES:
            for pid in pids(node):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while any(pids(node) for node in NODES) and time.monotonic() < deadline:
            time.sleep(0.5)


def down() -> None:
    """Kill what runs in the namespaces, then remove them and their links."""
    kill_all()
    for node in NODES:
        _ip("netns", "del", node.netns, check=False)
        _ip("link", "del", node.host_link, check=False)


def run(node: Node, *cmd: str, env: dict[str, str] | None = None, timeout: float = 300,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run ``cmd`` inside ``node``'s namespace."""
    return subprocess.run(["ip", "netns", "exec", node.netns, *cmd], env=env, timeout=timeout, check=check,
                          capture_output=True, text=True)
