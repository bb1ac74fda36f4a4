"""The engine replica's end of the stream channel: one pooled TLS connection per router
replica, opened with the router's secret once its certificate's fingerprint matched."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from deployments.core.generation import GenerationChunk
from deployments.stream_channel.tls import client_context, keep_alive, matches
from deployments.stream_channel.wire import (
    ACCEPTED,
    HANDSHAKE_TIMEOUT_S,
    HELLO,
    Address,
    ChannelClosed,
    ReplyTo,
    address_of,
    encode_frame,
)

CONNECT_ATTEMPTS = 3
"""Tries to open a connection to a router replica before its streams fail."""
RECONNECT_PAUSE_S = 0.2
"""Pause before the second try; twice that before the third."""
HIGH_WATER_BYTES = 1024 * 1024
"""Above this much unsent data a sender waits for the socket to drain (TCP back-pressure)."""


class _Connection:
    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer

    @property
    def closed(self) -> bool:
        return self.writer.is_closing()

    def send(self, stream_key: str, chunk: GenerationChunk) -> None:
        """Write one chunk; :class:`~deployments.stream_channel.wire.FrameTooLarge` (and
        nothing written) when it does not fit in a frame."""
        frame = encode_frame(stream_key, chunk)
        if self.closed:
            raise ChannelClosed("the router's stream connection closed")
        self.writer.write(frame)

    async def drain_if_backed_up(self) -> None:
        if self.writer.transport.get_write_buffer_size() > HIGH_WATER_BYTES:
            await self.writer.drain()


class StreamSender:
    """The engine replica's end: one pooled connection per router replica address."""

    def __init__(self) -> None:
        self._connections: dict[Address, _Connection] = {}
        self._connecting: dict[Address, asyncio.Lock] = {}
        self._tls = client_context()

    async def connection(self, address: Address) -> _Connection:
        """The open connection to ``address``, opened (or reopened) on first use: TLS, the
        router's certificate checked against the address's fingerprint, then the hello."""
        address = address_of(address)
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
                conn = self._connections[address] = _Connection(await self._open(address))
        return conn

    async def _open(self, address: Address) -> asyncio.StreamWriter:
        """A connection the router has accepted (its :data:`ACCEPTED` byte read). A try that
        the router cut (its handshake deadline, on a busy machine) is made again, at most
        :data:`CONNECT_ATTEMPTS` times; a wrong certificate is final."""
        for attempt in range(CONNECT_ATTEMPTS):
            try:
                return await self._open_once(address)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ChannelClosed) as exc:
                if isinstance(exc, ChannelClosed) or attempt == CONNECT_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(RECONNECT_PAUSE_S * (attempt + 1))
        raise AssertionError("unreachable")

    async def _open_once(self, address: Address) -> asyncio.StreamWriter:
        host, port, secret, fingerprint = address
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=self._tls, server_hostname="",
                                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S),
            HANDSHAKE_TIMEOUT_S * 2)
        try:
            if not matches(writer.get_extra_info("ssl_object"), fingerprint):
                raise ChannelClosed(f"the stream channel at {host}:{port} presented another certificate")
            keep_alive(writer.get_extra_info("socket"))
            writer.write(HELLO + secret.encode())
            if await asyncio.wait_for(reader.readexactly(len(ACCEPTED)), HANDSHAKE_TIMEOUT_S * 2) != ACCEPTED:
                raise ChannelClosed(f"the stream channel at {host}:{port} answered the hello with something else")
        except BaseException:
            writer.close()
            raise
        return writer

    async def send_all(self, reply_to: ReplyTo, chunks: AsyncIterator[GenerationChunk]) -> int:
        """Write every chunk of one stream to ``reply_to``; returns how many were sent."""
        conn = await self.connection(address_of(reply_to))
        key = reply_to[4]
        sent = 0
        # aclosing: if the connection fails, the chunk generator (and the generation in
        # vLLM behind it) is closed now, not whenever it is garbage-collected.
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                conn.send(key, chunk)
                sent += 1
                await conn.drain_if_backed_up()
        return sent

    def close(self) -> None:
        for conn in self._connections.values():
            with contextlib.suppress(Exception):  # the loop may already be gone at shutdown
                conn.writer.close()
        self._connections.clear()
