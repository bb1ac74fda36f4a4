"""The engine's side of the stream channel (deployments/stream_channel/sender.py): gone routers,
dropped connections, deadlines, reconnects and oversized chunks, over real TLS on loopback."""

from __future__ import annotations

import asyncio
import time

import pytest

from deployments.core.generation import GenerationChunk
from deployments.stream_channel import ChannelClosed, FrameTooLarge, IncomingStream, StreamReceiver, StreamSender
from deployments.stream_channel.receiver import _ReceiverProtocol
from tests.support.stream_channel import agen, chunks, connected, deliver, incoming


def test_sending_to_a_router_that_is_gone_fails():
    async def main():
        receiver = StreamReceiver("127.0.0.1")
        stream = IncomingStream(receiver)
        await receiver.start()
        await receiver.stop()
        with pytest.raises(OSError):
            await StreamSender().send_all(stream.reply_to, agen(chunks(["x"])))

    asyncio.run(main())


def test_a_router_that_drops_the_connection_stops_the_generation():
    async def main():
        receiver = StreamReceiver("127.0.0.1")
        stream = IncomingStream(receiver)
        await receiver.start()
        closed = asyncio.Event()

        async def endless_generation():
            try:
                while True:
                    yield GenerationChunk("x" * 1000, 1)
                    await asyncio.sleep(0.01)
            finally:
                closed.set()  # vLLM's generate aborts the request when its generator is closed

        async def drop_soon():
            await asyncio.sleep(0.3)
            for protocol in list(receiver._connections):
                protocol._transport.close()

        sending = asyncio.ensure_future(StreamSender().send_all(stream.reply_to, endless_generation()))
        await drop_soon()
        with pytest.raises((ChannelClosed, ConnectionError)):
            await asyncio.wait_for(sending, 10)
        assert closed.is_set()
        await receiver.stop()

    asyncio.run(main())


def test_an_engine_stops_within_its_deadline_when_the_router_reads_nothing():
    """A router whose node vanished reads nothing: the engine's writes back up. Its deadline
    (EngineDeployment.generate wraps send_all the same way) ends the wait and the generation."""
    async def main():
        receiver, sender, conn = await connected()
        stream = IncomingStream(receiver)
        while receiver.pending_connections:  # the hello is through
            await asyncio.sleep(0.01)
        for protocol in receiver._connections:
            protocol._transport.pause_reading()  # the router stops reading, as if its node were gone
        closed = asyncio.Event()

        async def endless_generation():
            try:
                while True:
                    yield GenerationChunk("x" * 60_000, 1)
                    await asyncio.sleep(0)
            finally:
                closed.set()

        start = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(sender.send_all(stream.reply_to, endless_generation()), 1.0)
        assert time.monotonic() - start < 3 and closed.is_set()
        sender.close()
        await receiver.stop()

    asyncio.run(main())


def test_the_sender_reconnects_after_a_router_restart_and_forgets_dead_routers():
    async def main():
        first, sender, conn = await connected()
        first_address = first.address
        conn.writer.close()  # the first router replica died: its connection is gone
        await first.stop()
        assert first_address in sender._connections
        second = StreamReceiver("127.0.0.1")
        stream, call = incoming(second)
        new_conn = await sender.connection(await second.start())
        assert new_conn is not conn
        assert first_address not in sender._connections
        assert await deliver(new_conn, ["hello"], stream, call) == ["hello"]
        sender.close()
        await second.stop()

    asyncio.run(main())


def test_a_chunk_too_large_for_a_frame_fails_its_request_and_not_the_connection(monkeypatch):
    async def main():
        receiver, sender, conn = await connected()
        monkeypatch.setattr("deployments.stream_channel.wire.MAX_FRAME_BYTES", 1000)
        big, _ = incoming(receiver)
        with pytest.raises(FrameTooLarge):
            await sender.send_all(big.reply_to, agen([GenerationChunk("x" * 5000, 1, "stop")]))
        stream, call = incoming(receiver)
        assert await deliver(conn, ["after"], stream, call) == ["after"]
        sender.close()
        await receiver.stop()

    asyncio.run(main())


def test_an_engine_tries_again_when_the_router_cut_its_connection_before_accepting_it(monkeypatch):
    """On a busy machine the router may cut a connection whose handshake ran past its
    deadline; the engine sends frames only after the router's accepted byte, and tries again."""
    original = _ReceiverProtocol.connection_made
    cut = []

    def cut_the_first(self, transport):
        if not cut:
            cut.append(True)
            transport.close()
            return
        original(self, transport)

    monkeypatch.setattr(_ReceiverProtocol, "connection_made", cut_the_first)

    async def main():
        receiver = StreamReceiver("127.0.0.1")
        await receiver.start()
        stream, call = incoming(receiver)
        conn = await StreamSender().connection(receiver.address)
        assert cut and await deliver(conn, ["after", "a retry"], stream, call) == ["after", "a retry"]
        await receiver.stop()

    asyncio.run(main())
