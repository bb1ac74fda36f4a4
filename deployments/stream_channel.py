"""The token stream's data path: engine replica -> router replica over one TCP connection.

Serve still carries the *request*: the router calls ``EngineDeployment.generate``
through its ``DeploymentHandle``, so Serve's request router picks the replica,
``max_ongoing_requests`` and queue limits apply, cancelling the call aborts the
generation, and a dead replica fails the call. Only the *chunks* travel here.

Why: a Ray streaming call costs every chunk a Ray object, a gRPC message and a trip
through both core workers and Serve's generator wrappers; on a 2-core CPU node that
CPU came straight out of the engine (docs/measurements.md). Here a chunk is one frame
written to a socket that every stream from this engine replica to that router
replica shares, so chunks written in the same engine step leave in one syscall.

Wire format: length-prefixed JSON frames (:mod:`deployments.stream_frames`). Frames for
request ids the router is not waiting for (a stream it gave up on) are dropped.

Who may connect: each router replica makes a random secret when it starts. It travels to
the engine inside ``reply_to`` (through Serve, never over this socket in the other
direction), and an engine's connection must open with ``HELLO`` + that secret before any
frame is read. Anything else, or a connection silent for ``HELLO_TIMEOUT_S``, is closed;
so a process that can reach the port, even one that knows a live request id, cannot
inject a chunk. Connections per router replica are capped (``MAX_CONNECTIONS``, and
``MAX_PENDING`` not yet past their hello).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import socket
from collections.abc import AsyncIterator
from typing import Any

from deployments.generation import GenerationChunk
from deployments.stream_frames import decode_frames, encode_frame

logger = logging.getLogger("glm_serve.stream_channel")

_HIGH_WATER_BYTES = 1024 * 1024
"""Above this much unsent data a sender waits for the socket to drain (TCP back-pressure)."""

Address = tuple[str, int, str]
"""(host, port, secret) of a router replica's stream channel."""

HELLO = b"GLMSTREAM1"
HELLO_TIMEOUT_S = 5.0
"""How long a new connection has to present the secret."""
MAX_CONNECTIONS = 1024
"""Connections one router replica keeps (one per engine replica that streams to it)."""
MAX_PENDING = 64
"""Connections not yet past their hello; more are closed at once."""


class ChannelClosed(ConnectionError):
    """The connection a stream's chunks were travelling on closed before its last chunk."""


class _ReceiverProtocol(asyncio.Protocol):
    """One engine replica's connection into the router: hello, then frames -> per-request queues."""

    def __init__(self, receiver: StreamReceiver):
        self._receiver = receiver
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._seen: set[str] = set()  # open streams this connection has carried chunks for
        self._hello: bytes | None = HELLO + receiver.secret.encode()  # None once presented
        self._hello_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        receiver = self._receiver
        if len(receiver._connections) >= MAX_CONNECTIONS or receiver._pending >= MAX_PENDING:
            logger.warning("stream channel: refusing a connection from %s (connection cap)",
                           transport.get_extra_info("peername"))
            transport.close()
            self._hello = None  # never counted
            return
        receiver._pending += 1
        receiver._connections.add(self)
        self._hello_timer = asyncio.get_running_loop().call_later(HELLO_TIMEOUT_S, self._refuse, "no hello in time")

    def _refuse(self, why: str) -> None:
        logger.warning("stream channel: closing a connection from %s: %s",
                       self._transport.get_extra_info("peername") if self._transport else None, why)
        self._buffer.clear()
        if self._transport is not None:
            self._transport.close()

    def _check_hello(self) -> bool:
        """Whether the connection has presented the secret; closes it if it presented
        something else. Until the hello is whole, nothing else is read."""
        assert self._hello is not None
        if len(self._buffer) < len(self._hello):
            if not self._hello.startswith(bytes(self._buffer)):
                self._refuse("wrong hello")
            return False
        presented, rest = bytes(self._buffer[:len(self._hello)]), self._buffer[len(self._hello):]
        if not hmac.compare_digest(presented, self._hello):
            self._refuse("wrong hello")
            return False
        self._buffer = bytearray(rest)
        self._hello = None
        self._receiver._pending -= 1
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        return True

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self._buffer += data
        if self._hello is not None and not self._check_hello():
            return
        try:
            frames = decode_frames(self._buffer)
        except (ValueError, TypeError) as exc:
            logger.warning("closing a stream connection that sent a bad frame: %s", exc)
            assert self._transport is not None
            self._transport.close()
            return
        queues = self._receiver._queues
        for request_id, chunk in frames:
            queue = queues.get(request_id)
            if queue is None:
                self._seen.discard(request_id)
                continue  # the router gave up on this stream (client left, error): drop
            queue.put_nowait(chunk)
            if chunk.finish_reason is None:
                self._seen.add(request_id)
            else:
                self._seen.discard(request_id)
        if len(self._seen) > 2 * len(queues) + 64:
            self._seen &= queues.keys()  # streams the router closed before their last chunk

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self._receiver._connections:
            self._receiver._connections.discard(self)
            if self._hello is not None:
                self._receiver._pending -= 1
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        # Streams that were mid-way on this connection will get no more chunks.
        for request_id in self._seen:
            queue = self._receiver._queues.get(request_id)
            if queue is not None:
                queue.put_nowait(ChannelClosed("the engine replica's stream connection closed"))
        self._seen.clear()


class StreamReceiver:
    """The router replica's end: a TCP listener whose chunks land in per-request queues.

    The socket is bound at construction, so a ``host`` this node does not have fails
    the replica at start-up with its name rather than every request later. Call
    :meth:`start` on the event loop that serves requests (it is idempotent), then
    :meth:`open` a queue before asking an engine to stream to :attr:`address`, and
    :meth:`close` it when the stream ends however it ends.
    """

    def __init__(self, host: str, port: int = 0):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((host, port))
        except OSError as exc:
            self._socket.close()
            raise OSError(f"stream channel cannot listen on {host}:{port} (router.stream_host): {exc}") from exc
        self.secret = secrets.token_hex(16)
        self.address: Address = (host, self._socket.getsockname()[1], self.secret)
        self._connections: set[_ReceiverProtocol] = set()
        self._pending = 0  # connections not yet past their hello
        self._server: asyncio.Server | None = None
        self._starting: asyncio.Lock | None = None
        self._queues: dict[str, asyncio.Queue[Any]] = {}

    async def start(self) -> Address:
        """Start accepting engine connections (once); returns the address to send to."""
        if self._server is None:
            self._starting = self._starting or asyncio.Lock()
            async with self._starting:  # the first requests may arrive together
                if self._server is None:
                    self._server = await asyncio.get_running_loop().create_server(
                        lambda: _ReceiverProtocol(self), sock=self._socket)
                    logger.info("stream channel listening on %s:%d", *self.address[:2])
        return self.address

    def open(self, request_id: str) -> asyncio.Queue[Any]:
        """The queue that will get ``request_id``'s chunks (and failures put by the caller)."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._queues[request_id] = queue
        return queue

    def close(self, request_id: str) -> None:
        """Stop delivering ``request_id``'s chunks; later frames for it are dropped."""
        self._queues.pop(request_id, None)

    @property
    def open_streams(self) -> int:
        return len(self._queues)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        else:
            self._socket.close()


class _Connection:
    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer

    @property
    def closed(self) -> bool:
        return self.writer.is_closing()

    def send(self, request_id: str, chunk: GenerationChunk) -> None:
        if self.closed:
            raise ChannelClosed("the router's stream connection closed")
        self.writer.write(encode_frame(request_id, chunk))

    async def drain_if_backed_up(self) -> None:
        if self.writer.transport.get_write_buffer_size() > _HIGH_WATER_BYTES:
            await self.writer.drain()


class StreamSender:
    """The engine replica's end: one pooled connection per router replica address."""

    def __init__(self) -> None:
        self._connections: dict[Address, _Connection] = {}
        self._connecting: dict[Address, asyncio.Lock] = {}

    async def connection(self, address: Address) -> _Connection:
        """The open connection to ``address``, opened (or reopened) on first use, its
        first bytes the router's secret."""
        address = (address[0], address[1], address[2])  # Ray may hand back a list
        conn = self._connections.get(address)
        if conn is not None and not conn.closed:
            return conn
        lock = self._connecting.setdefault(address, asyncio.Lock())
        async with lock:
            conn = self._connections.get(address)
            if conn is None or conn.closed:
                # Router replicas come and go (scaling, restarts): forget the dead ones.
                for gone in [a for a, c in self._connections.items() if c.closed and a != address]:
                    if not self._connecting[gone].locked():
                        del self._connections[gone], self._connecting[gone]
                _, writer = await asyncio.open_connection(address[0], address[1])
                writer.write(HELLO + address[2].encode())
                conn = self._connections[address] = _Connection(writer)
        return conn

    async def send_all(self, address: Address, request_id: str,
                       chunks: AsyncIterator[GenerationChunk]) -> int:
        """Write every chunk of one stream to ``address``; returns how many were sent."""
        conn = await self.connection(address)
        sent = 0
        # aclosing: if the connection fails, the chunk generator (and the generation in
        # vLLM behind it) is closed now, not whenever it is garbage-collected.
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                conn.send(request_id, chunk)
                sent += 1
                await conn.drain_if_backed_up()
        return sent

    def close(self) -> None:
        for conn in self._connections.values():
            with contextlib.suppress(Exception):  # the loop may already be gone at shutdown
                conn.writer.close()
        self._connections.clear()


LATE_CHUNK_TIMEOUT_S = 30.0
"""How long a stream waits for chunks still in flight after the engine's call returned."""


class IncomingStream:
    """One stream as the router sees it: chunks from the channel until the last one.

    ``call`` is the engine call that produces the stream (a Serve ``DeploymentResponse``
    of ``EngineDeployment.generate``), ``cancel`` cancels it. The call's outcome
    travels through the same queue as the chunks, so a failed call (a refusal, a dead
    replica, an overloaded deployment) is raised to the reader, even mid-stream. The call can
    return before its last frames arrive: it returns how many chunks it sent, and
    iteration ends when that many have come.
    """

    def __init__(self, receiver: StreamReceiver, request_id: str, call: Any, cancel: Any, choices: int = 1):
        self._receiver = receiver
        self._request_id = request_id
        self._queue = receiver.open(request_id)
        self._cancel = cancel
        self._call: asyncio.Future[Any] = asyncio.ensure_future(call)
        self._call.add_done_callback(self._call_ended)
        self._received = 0
        self._expected: int | None = None
        self._unfinished_choices = choices  # the stream is complete when each choice has finished

    def _call_ended(self, call: asyncio.Future[Any]) -> None:
        if not call.cancelled():
            call.exception()  # retrieved here, so asyncio never logs it as unhandled
        self._queue.put_nowait(call)

    def __aiter__(self) -> IncomingStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            if self._expected is not None and self._received >= self._expected:
                raise StopAsyncIteration
            if self._expected is None:
                item = await self._queue.get()
            else:
                try:
                    item = await asyncio.wait_for(self._queue.get(), LATE_CHUNK_TIMEOUT_S)
                except asyncio.TimeoutError:
                    raise ChannelClosed(
                        f"{self._expected - self._received} chunks sent by the engine never arrived") from None
            if isinstance(item, GenerationChunk):
                self._received += 1
                if item.finish_reason is not None:
                    self._unfinished_choices -= 1
                return item
            if isinstance(item, BaseException):
                raise item
            if item.cancelled():
                raise ChannelClosed("the engine call was cancelled")
            exc = item.exception()
            if exc is not None:
                raise exc
            self._expected = item.result()

    def fail(self, exc: BaseException) -> None:
        """Make the reader raise ``exc`` (a deadline, say) after the chunks already queued."""
        self._queue.put_nowait(exc)

    async def call_settled(self, timeout: float) -> None:
        """Wait (at most ``timeout``) for the engine call itself to end, without cancelling
        it. After a lost connection, the call's own failure is what tells Serve's request
        router that the replica died, so a retry sent before it may go to the same replica."""
        await asyncio.wait([self._call], timeout=timeout)

    def close(self) -> None:
        """Stop: drop later chunks, and cancel the engine call unless the stream is complete."""
        self._receiver.close(self._request_id)
        if self._unfinished_choices > 0 and not self._call.done():
            self._cancel()
