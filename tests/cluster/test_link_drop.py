"""The stream channel across a real link that drops mid-stream: the engine side stops
within the request's deadline instead of writing into a dead connection to max_tokens.

Two network namespaces of their own (not test_multinode's) joined by one veth pair; a
router's receiver in one, an engine's sender in the other, each a plain Python process
(no Ray: what is under test is the channel and the engine's deadline, the same
``asyncio.wait_for`` around ``StreamSender.send_all`` that ``EngineDeployment.generate`` has).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROUTER_NS, ENGINE_NS = "glm-link-router", "glm-link-engine"
ROUTER_IP, ENGINE_IP = "10.214.0.1", "10.214.0.2"
ROUTER_LINK, ENGINE_LINK = "glml-router", "glml-engine"
DEADLINE_S = 8.0

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

RECEIVER = f"""
import asyncio, json, sys
from deployments.stream_channel import IncomingStream, StreamReceiver

async def main():
    receiver = StreamReceiver("{ROUTER_IP}")
    await receiver.start()
    stream = IncomingStream(receiver)
    print(json.dumps(stream.reply_to), flush=True)
    received = 0
    while True:
        await stream._queue.get()
        received += 1
        if received % 10 == 0:
            print(received, flush=True)

asyncio.run(main())
"""

SENDER = """
import asyncio, json, sys, time
from deployments.core.generation import GenerationChunk
from deployments.stream_channel import StreamSender

async def main():
    reply_to = json.loads(sys.argv[1])
    closed = []

    async def endless():
        try:
            while True:
                yield GenerationChunk("x" * 2000, 1)
                await asyncio.sleep(0.005)
        finally:
            closed.append(time.monotonic())

    started = time.monotonic()
    try:
        await asyncio.wait_for(StreamSender().send_all(reply_to, endless()), float(sys.argv[2]))
        outcome = "finished"
    except asyncio.TimeoutError:
        outcome = "deadline"
    except Exception as exc:
        outcome = type(exc).__name__
    print(json.dumps({"outcome": outcome, "after_s": time.monotonic() - started, "closed": bool(closed)}),
          flush=True)

asyncio.run(main())
"""


def _ip(*args: str, netns: str | None = None, check: bool = True) -> None:
    cmd = ["ip", *args] if netns is None else ["ip", "netns", "exec", netns, "ip", *args]
    subprocess.run(cmd, check=check, capture_output=True)


def _down() -> None:
    for ns in (ROUTER_NS, ENGINE_NS):
        subprocess.run(["ip", "netns", "pids", ns], capture_output=True)
        _ip("netns", "del", ns, check=False)


@pytest.fixture()
def link():
    _down()
    for ns in (ROUTER_NS, ENGINE_NS):
        _ip("netns", "add", ns)
        _ip("link", "set", "lo", "up", netns=ns)
    _ip("link", "add", ROUTER_LINK, "type", "veth", "peer", "name", ENGINE_LINK)
    for ns, end, ip in ((ROUTER_NS, ROUTER_LINK, ROUTER_IP), (ENGINE_NS, ENGINE_LINK, ENGINE_IP)):
        _ip("link", "set", end, "netns", ns)
        _ip("addr", "add", f"{ip}/24", "dev", end, netns=ns)
        _ip("link", "set", end, "up", netns=ns)
    yield
    _down()


def _python(netns: str, code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", code, *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stream_then_drop_the_link(deadline_s: float) -> tuple[dict, float, str]:
    """Stream across the link, drop it, and return what the engine side made of it."""
    router = _python(ROUTER_NS, RECEIVER)
    engine = None
    try:
        reply_to = router.stdout.readline()
        assert reply_to.startswith("["), router.stderr.read() if router.poll() is not None else reply_to
        engine = _python(ENGINE_NS, SENDER, reply_to.strip(), str(deadline_s))
        # the stream is flowing across the link
        while True:
            line = router.stdout.readline()
            assert line, f"the router side ended: {router.stderr.read()[-2000:]}"
            assert engine.poll() is None, engine.stderr.read()
            if int(line) >= 50:
                break
        dropped_at = time.monotonic()
        _ip("link", "set", ROUTER_LINK, "down", netns=ROUTER_NS)
        out, err = engine.communicate(timeout=deadline_s + 30)
        return json.loads(out.strip().splitlines()[-1]), time.monotonic() - dropped_at, err
    finally:
        for proc in (router, engine):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_an_engine_stops_within_its_deadline_when_the_link_to_its_router_drops(link):
    result, stopped_after, err = _stream_then_drop_the_link(DEADLINE_S)
    assert result["outcome"] == "deadline" and result["closed"], (result, err[-2000:])
    assert result["after_s"] <= DEADLINE_S + 1 and stopped_after <= DEADLINE_S + 2, (result, stopped_after)
    print(f"\nFIGURE link drop: the engine side stopped {stopped_after:.1f} s after the link went down "
          f"(deadline {DEADLINE_S:g} s from the request's start), its generation closed")


def test_with_a_distant_deadline_the_dead_link_itself_ends_the_engines_stream(link):
    """TCP's user timeout (deployments/stream_channel/tls.py): unacknowledged writes fail the
    connection, so even a request with an hour left stops writing into a vanished router."""
    from deployments.stream_channel.tls import USER_TIMEOUT_S

    result, stopped_after, err = _stream_then_drop_the_link(3600)
    assert result["outcome"] not in ("deadline", "finished") and result["closed"], (result, err[-2000:])
    assert stopped_after <= USER_TIMEOUT_S + 15, (result, stopped_after)
    print(f"\nFIGURE dead link: the engine side stopped {stopped_after:.1f} s after the link went down "
          f"({result['outcome']}; TCP user timeout {USER_TIMEOUT_S} s)")
