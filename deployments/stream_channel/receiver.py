"""The router replica's end of the stream channel: a TLS listener whose chunks land in
per-stream queues.

A connection must, within :data:`~deployments.stream_channel.wire.HANDSHAKE_TIMEOUT_S`,
finish its TLS handshake and then send the hello and the router's secret, read whole
and compared in constant time: until then nothing else is read, and how or when a wrong
one is closed does not depend on which byte was wrong. Connections that have not got
that far are capped per source address (:data:`MAX_PENDING_PER_SOURCE`), so idle
connections from one place cannot keep an engine out; all connections are capped too
(:data:`MAX_CONNECTIONS`).

Past the hello, a frame is delivered only to the stream whose key it carries; keys are
random per request and travel only to the engine the request was sent to, so a peer that
knows a request id (every client sees its own) still cannot write into its stream. A
stream's queue is bounded (:data:`MAX_QUEUED_CHUNKS`): past it that stream fails, the
others on the connection go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import socket
import time
from typing import Any

from deployments.stream_channel.tls import RouterCertificate, keep_alive
from deployments.stream_channel.wire import (
    ACCEPTED,
    HANDSHAKE_TIMEOUT_S,
    HELLO,
    SECRET_CHARS,
    Address,
    ChannelClosed,
    ReplyTo,
    decode_frames,
)

logger = logging.getLogger("glm_serve.stream_channel")

MAX_CONNECTIONS = 1024
"""Connections one router replica keeps (one per engine replica that streams to it)."""
MAX_PENDING_PER_SOURCE = 16
"""Connections from one address that have not finished their handshake and hello; more
are closed at once. An engine replica opens one per router replica."""
MAX_QUEUED_CHUNKS = 65_536
"""Chunks one stream may have waiting for the router to relay them: above what any request's
token budget can produce (a chunk holds at least one token; n x max_tokens is capped at
32,768 by default), so only a broken or hostile engine reaches it. A stream with logprobs
can lag its engine by thousands of chunks while the router encodes them."""
REFUSAL_LOG_EVERY_S = 10.0
"""Refused connections are logged as a count at most this often: a flood of them must not
become a flood of log lines."""


class StreamOverflow(ChannelClosed):
    """A stream had more chunks waiting than :data:`MAX_QUEUED_CHUNKS`."""


class _ReceiverProtocol(asyncio.Protocol):
    """One engine replica's connection into the router, once its TLS handshake is done:
    the hello, then frames -> queues. Counted as pending for its source address from the
    accept (:meth:`StreamReceiver._accept_forever`) until the hello is through."""

    def __init__(self, receiver: StreamReceiver, source: str, deadline: asyncio.TimerHandle | None):
        self._receiver = receiver
        self._source = source
        self._deadline: asyncio.TimerHandle | None = deadline
        self._buffer = bytearray()
        self._transport: asyncio.BaseTransport | None = None
        self._seen: set[str] = set()  # open streams this connection has carried chunks for
        self._hello: bytes | None = HELLO + receiver.secret.encode()  # None once presented
        receiver._connections.add(self)

    # -- opening ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def _refuse(self, why: str) -> None:
        self._receiver.refused(self._source, why)
        self._buffer.clear()
        if self._transport is not None:
            self._transport.close()
        self._forget()

    def _passed_hello(self) -> None:
        self._hello = None
        self._receiver._release(self._source)
        if self._deadline is not None:
            self._deadline.cancel()

    def _forget(self) -> None:
        """Leave the receiver's counts (once, however the connection ended)."""
        receiver = self._receiver
        if self in receiver._connections:
            receiver._connections.discard(self)
            if self._hello is not None:
                self._receiver._release(self._source)
        if self._deadline is not None:
            self._deadline.cancel()

    # -- reading --------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._buffer += data
        hello = self._hello
        if hello is not None:
            if len(self._buffer) < len(hello):
                return  # read it whole first: closing at the first wrong byte would tell which
            presented = bytes(self._buffer[:len(hello)])
            del self._buffer[:len(hello)]
            if not hmac.compare_digest(presented, hello):
                self._refuse("wrong hello")
                return
            self._passed_hello()
            transport.write(ACCEPTED)
        try:
            frames = decode_frames(self._buffer)
        except ValueError as exc:
            self._refuse(f"bad frame: {exc}")
            return
        queues = self._receiver._queues
        for key, chunk in frames:
            queue = queues.get(key)
            if queue is None:
                self._seen.discard(key)
                continue  # the router gave up on this stream (client left, error), or no such stream
            if queue.qsize() >= MAX_QUEUED_CHUNKS:
                del queues[key]  # this stream only: later frames for it are dropped
                self._seen.discard(key)
                queue.put_nowait(StreamOverflow(f"more than {MAX_QUEUED_CHUNKS} chunks waited to be relayed"))
                continue
            queue.put_nowait(chunk)
            if chunk.finish_reason is None:
                self._seen.add(key)
            else:
                self._seen.discard(key)
        if len(self._seen) > 2 * len(queues) + 64:
            self._seen &= queues.keys()  # streams the router closed before their last chunk

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        receiver = self._receiver
        # Streams that were mid-way on this connection will get no more chunks.
        for key in self._seen:
            queue = receiver._queues.get(key)
            if queue is not None:
                queue.put_nowait(ChannelClosed("the engine replica's stream connection closed"))
        self._seen.clear()


class StreamReceiver:
    """The router replica's end: a TLS listener whose chunks land in per-stream queues.

    The socket is bound at construction, so a ``host`` this node does not have fails
    the replica at start-up with its name rather than every request later. Call
    :meth:`start` on the event loop that serves requests (it is idempotent), then
    :meth:`open` a stream before asking an engine to stream to its reply address, and
    :meth:`close` it when the stream ends however it ends.
    """

    def __init__(self, host: str, port: int = 0):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((host, port))
            self._socket.setblocking(False)
        except OSError as exc:
            self._socket.close()
            raise OSError(f"stream channel cannot listen on {host}:{port} (router.stream_host): {exc}") from exc
        self.secret = secrets.token_hex(SECRET_CHARS // 2)
        self.certificate = RouterCertificate()
        self.address: Address = (host, self._socket.getsockname()[1], self.secret, self.certificate.fingerprint)
        self._connections: set[_ReceiverProtocol] = set()
        self._pending: dict[str, int] = {}  # by source address: connections not yet past their hello
        self._accepting: asyncio.Task | None = None
        self._queues: dict[str, asyncio.Queue[Any]] = {}
        self._refusals: dict[tuple[str, str], int] = {}
        self._refusals_logged_at = float("-inf")

    async def start(self) -> Address:
        """Start accepting engine connections (once); returns this channel's address."""
        if self._accepting is None:
            self._socket.listen(socket.SOMAXCONN)
            self._accepting = asyncio.get_running_loop().create_task(self._accept_forever())
            logger.info("stream channel listening on %s:%d (TLS)", *self.address[:2])
        return self.address

    async def _accept_forever(self) -> None:
        """Accept connections ourselves, so that a source's pending ones are counted from the
        accept, before any TLS work; hand each within its caps to the loop's own TLS."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(self._socket)
            except OSError as exc:  # out of file descriptors, say: back off, keep listening
                logger.warning("stream channel: accept failed (%s)", exc)
                await asyncio.sleep(0.1)
                continue
            source = peer[0] if peer else ""
            if len(self._connections) >= MAX_CONNECTIONS or self._pending.get(source, 0) >= MAX_PENDING_PER_SOURCE:
                self.refused(source, "connection cap")
                conn.close()
                continue
            self._pending[source] = self._pending.get(source, 0) + 1
            keep_alive(conn)
            loop.create_task(self._handshake(conn, source))

    async def _handshake(self, conn: socket.socket, source: str) -> None:
        loop = asyncio.get_running_loop()
        protocol: _ReceiverProtocol | None = None

        def made() -> _ReceiverProtocol:
            nonlocal protocol
            deadline = loop.call_at(started + HANDSHAKE_TIMEOUT_S, lambda: protocol._refuse(
                "no hello in time"))
            protocol = _ReceiverProtocol(self, source, deadline)
            return protocol

        started = loop.time()
        try:
            await asyncio.wait_for(loop.connect_accepted_socket(
                made, conn, ssl=self.certificate.server_context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S),
                HANDSHAKE_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError, ConnectionError) as exc:  # not a TLS client, or too slow
            conn.close()
            if protocol is not None:
                protocol._refuse(f"TLS handshake failed ({type(exc).__name__})")
            else:
                self._release(source)
                self.refused(source, f"TLS handshake failed ({type(exc).__name__})")

    def _release(self, source: str) -> None:
        left = self._pending.get(source, 0) - 1
        if left > 0:
            self._pending[source] = left
        else:
            self._pending.pop(source, None)

    def open(self) -> tuple[ReplyTo, asyncio.Queue[Any]]:
        """A new stream: the address to give its engine, and the queue its chunks (and the
        failures put by the caller) arrive in."""
        key = secrets.token_urlsafe(16)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._queues[key] = queue
        return (*self.address, key), queue

    def close(self, reply_to: ReplyTo) -> None:
        """Stop delivering the stream's chunks; later frames for it are dropped."""
        self._queues.pop(reply_to[4], None)

    @property
    def open_streams(self) -> int:
        return len(self._queues)

    def refused(self, source: str, why: str) -> None:
        """Count a refused connection; log the counts at most every :data:`REFUSAL_LOG_EVERY_S`."""
        self._refusals[(source, why)] = self._refusals.get((source, why), 0) + 1
        now = time.monotonic()
        if now - self._refusals_logged_at >= REFUSAL_LOG_EVERY_S:
            self._refusals_logged_at = now
            for (where, reason), count in sorted(self._refusals.items()):
                logger.warning("stream channel: closed %d connection(s) from %s: %s", count, where, reason)
            self._refusals.clear()

    @property
    def pending_connections(self) -> int:
        """Connections that have not finished their handshake and hello."""
        return sum(self._pending.values())

    async def stop(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        self._socket.close()
        for protocol in list(self._connections):
            if protocol._transport is not None:
                protocol._transport.close()
