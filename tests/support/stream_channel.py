"""Streams, fake engine calls and peers for the stream channel's tests (deployments/stream_channel/)."""

from __future__ import annotations

import asyncio
import ssl
import time

from deployments.core.generation import GenerationChunk
from deployments.stream_channel import IncomingStream, StreamReceiver, StreamSender
from deployments.stream_channel.tls import client_context


def chunks(texts: list[str], first_prompt_tokens: int = 7) -> list[GenerationChunk]:
    """A reply as the engine sends it: one chunk per text, the first with its prompt, the last finished."""
    out = [GenerationChunk(t, 1) for t in texts]
    out[0].prompt_tokens, out[0].replica_id = first_prompt_tokens, "replica-a"
    out[-1].finish_reason = "stop"
    return out


async def agen(items):
    """``items`` as an async iterator."""
    for item in items:
        yield item


class FakeCall:
    """Stands in for a Serve DeploymentResponse: an awaitable the test resolves by hand."""

    def __init__(self):
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.cancelled = False

    def __await__(self):
        return self.future.__await__()

    def cancel(self):
        self.cancelled = True
        self.future.cancel()


def incoming(receiver: StreamReceiver, choices: int = 1) -> tuple[IncomingStream, FakeCall]:
    """A stream the router waits for, and the engine call behind it."""
    call = FakeCall()
    return IncomingStream(receiver, choices).attach(call, call.cancel), call


async def connected(host: str = "127.0.0.1"):
    """A listening receiver, and a sender with its connection to it."""
    receiver = StreamReceiver(host)
    sender = StreamSender()
    conn = await sender.connection(await receiver.start())
    return receiver, sender, conn


async def deliver(conn, texts: list[str], stream: IncomingStream, call: FakeCall) -> list[str]:
    """Send a whole reply as the engine would, end its call, and return the texts the router read."""
    for chunk in chunks(texts):
        conn.send(stream.reply_to[4], chunk)
    call.future.set_result(len(texts))
    return [c.text for c in await asyncio.wait_for(collect(stream), 5)]


async def collect(stream: IncomingStream) -> list:
    return [item async for item in stream]


async def tls_peer(receiver: StreamReceiver, source: str = "127.0.0.1"):
    """A peer that completes TLS with the router (it need not know any secret)."""
    return await asyncio.open_connection(*receiver.address[:2], ssl=client_context(), server_hostname="",
                                         local_addr=(source, 0))


async def closed_after(reader: asyncio.StreamReader, limit_s: float = 5) -> float | None:
    """Seconds until the other end closed the connection; None if it stayed open."""
    start = time.monotonic()
    try:
        while await asyncio.wait_for(reader.read(4096), limit_s):
            pass
    except asyncio.TimeoutError:
        return None
    except (ConnectionError, ssl.SSLError):
        pass
    return time.monotonic() - start
