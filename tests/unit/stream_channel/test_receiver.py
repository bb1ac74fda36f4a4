"""The router's listener (deployments/stream_channel/receiver.py): streams, and what a hostile
peer on the network can and cannot do, over real TLS sockets on loopback."""

from __future__ import annotations

import asyncio
import struct

import pytest

from deployments.core.generation import GenerationChunk
from deployments.stream_channel import StreamReceiver, StreamSender
from deployments.stream_channel import receiver as receiver_module
from deployments.stream_channel.receiver import StreamOverflow, _ReceiverProtocol
from deployments.stream_channel.wire import HANDSHAKE_TIMEOUT_S, HELLO, encode_frame
from tests.support.stream_channel import agen, chunks, closed_after, collect, connected, deliver, incoming, tls_peer


def test_two_interleaved_streams_each_get_their_own_chunks_in_order():
    async def main():
        receiver = StreamReceiver("127.0.0.1")
        starts = await asyncio.gather(receiver.start(), receiver.start())  # two first requests at once
        assert starts[1] == starts[0] == receiver.address
        sender = StreamSender()
        streams = {name: incoming(receiver) for name in ("a", "b")}
        expected = {"a": chunks(["A1", "A2", "A3"]), "b": chunks(["B1", "B2"])}

        async def engine(name):
            stream, call = streams[name]
            sent = await sender.send_all(stream.reply_to, agen(expected[name]))
            call.future.set_result(sent)  # the call may return before the frames arrive

        results = await asyncio.gather(collect(streams["a"][0]), collect(streams["b"][0]), engine("a"), engine("b"))
        assert results[0] == expected["a"] and results[1] == expected["b"]
        assert receiver.open_streams == 2
        for stream, _ in streams.values():
            stream.close()
        assert receiver.open_streams == 0 and not any(c.cancelled for _, c in streams.values())
        sender.close()
        await receiver.stop()

    asyncio.run(main())


def test_bad_frames_close_only_their_connection_and_unknown_streams_are_dropped():
    async def main():
        receiver, sender, conn = await connected()
        reader, rogue = await tls_peer(receiver)
        rogue.write(HELLO + receiver.secret.encode() + struct.pack(">I", 5) + b"nope!")
        await rogue.drain()
        assert await closed_after(reader) is not None

        stream, call = incoming(receiver)
        conn.send("nobody-waits-for-this", GenerationChunk("lost", 1, "stop"))
        assert await deliver(conn, ["ok"], stream, call) == ["ok"]
        sender.close()
        await receiver.stop()

    asyncio.run(main())


def test_a_host_this_machine_does_not_have_fails_at_construction_with_the_field_name():
    with pytest.raises(OSError, match="router.stream_host"):
        StreamReceiver("198.51.100.7")  # TEST-NET-2: documentation only, not a local address


def test_streams_the_router_closed_early_are_not_remembered_forever():
    async def main():
        receiver = StreamReceiver("127.0.0.1")
        protocol = _ReceiverProtocol(receiver, "127.0.0.1", None)
        protocol._transport = type("Open", (), {"is_closing": lambda self: False, "close": lambda self: None})()
        protocol._hello = None  # past the hello
        for _ in range(200):  # clients that left after their first chunk
            stream, _ = incoming(receiver)
            protocol.data_received(encode_frame(stream.reply_to[4], GenerationChunk("x", 1)))
            stream.close()
        protocol.data_received(encode_frame("late", GenerationChunk("y", 1)))
        assert len(protocol._seen) <= 64
        await receiver.stop()

    asyncio.run(main())


@pytest.mark.parametrize("opening", ["plain", "wrong secret", "right secret, guessed key"])
def test_a_peer_cannot_write_into_a_stream_it_was_not_given(opening):
    async def main():
        receiver, sender, conn = await connected()
        stream, call = incoming(receiver)
        request_id_like = "chatcmpl-0123"  # clients see their request ids; the stream key never leaves the servers
        if opening == "plain":
            reader, rogue = await asyncio.open_connection(*receiver.address[:2])
            rogue.write(HELLO + receiver.secret.encode())
        else:
            reader, rogue = await tls_peer(receiver)
            secret = receiver.secret if opening.startswith("right") else "0" * len(receiver.secret)
            rogue.write(HELLO + secret.encode())
        real = stream.reply_to[4]
        near_miss = real[:-1] + ("A" if real[-1] != "A" else "B")  # one character off the real key
        for key in (request_id_like, near_miss):
            rogue.write(encode_frame(key, GenerationChunk("INJECTED", 1, "stop")))
        await rogue.drain()
        if opening != "right secret, guessed key":
            assert await closed_after(reader) is not None, "closed without the TLS handshake and secret"
        assert await deliver(conn, ["real"], stream, call) == ["real"]
        sender.close()
        await receiver.stop()

    asyncio.run(main())


def test_how_a_wrong_secret_is_closed_does_not_tell_which_byte_was_wrong():
    """The hello is read whole before it is compared: a wrong first byte and a right
    first byte are both left waiting, and a whole wrong hello is closed the same way
    wherever its wrong byte is."""
    async def main():
        receiver = StreamReceiver("127.0.0.1")
        await receiver.start()
        secret = receiver.secret.encode()
        wrong_first = bytes([secret[0] ^ 1]) + secret[1:]
        wrong_last = secret[:-1] + bytes([secret[-1] ^ 1])
        partial, writers = [], []  # a writer that is garbage-collected closes its connection
        for prefix in (HELLO + wrong_first[:1], HELLO + secret[:1]):
            reader, writer = await tls_peer(receiver)
            writer.write(prefix)
            partial.append(closed_after(reader))
            writers.append(writer)
        waited = await asyncio.gather(*partial)
        # neither is closed early: both only at the handshake deadline
        assert all(w is not None and w >= HANDSHAKE_TIMEOUT_S * 0.8 for w in waited), waited
        whole = []
        for hello in (HELLO + wrong_first, HELLO + wrong_last):
            reader, writer = await tls_peer(receiver)
            writer.write(hello)
            whole.append(closed_after(reader))
            writers.append(writer)
        closed = await asyncio.gather(*whole)
        assert all(c is not None and c < HANDSHAKE_TIMEOUT_S * 0.8 for c in closed), closed
        await receiver.stop()

    asyncio.run(main())


def test_idle_connections_from_one_source_cannot_keep_an_engine_out(monkeypatch):
    """64 connections that never finish their handshake, renewed as they are cut: an
    engine connecting from another address (a restarted one) still streams."""
    async def main():
        receiver = StreamReceiver("127.0.0.1")
        await receiver.start()
        idle = []
        for _ in range(64):
            try:
                idle.append(await asyncio.open_connection(*receiver.address[:2], local_addr=("127.0.0.2", 0)))
            except OSError:
                pass
        await asyncio.sleep(0.1)
        assert receiver._pending.get("127.0.0.2", 0) <= receiver_module.MAX_PENDING_PER_SOURCE
        sender = StreamSender()
        stream, call = incoming(receiver)
        conn = await sender.connection(stream.reply_to[:4])
        assert await deliver(conn, ["still", "works"], stream, call) == ["still", "works"]
        # the idle ones are cut at the handshake deadline
        assert await closed_after(idle[0][0]) is not None
        await asyncio.sleep(0.1)
        assert receiver.pending_connections == 0
        sender.close()
        await receiver.stop()

    asyncio.run(main())


def test_a_stream_past_its_queue_bound_fails_alone(monkeypatch):
    monkeypatch.setattr(receiver_module, "MAX_QUEUED_CHUNKS", 5)

    async def main():
        receiver, sender, conn = await connected()
        flooded, _ = incoming(receiver)
        other, other_call = incoming(receiver)
        for _ in range(10):
            conn.send(flooded.reply_to[4], GenerationChunk("x", 1))
        assert await deliver(conn, ["fine"], other, other_call) == ["fine"]
        received = []
        with pytest.raises(StreamOverflow):
            async for chunk in flooded:
                received.append(chunk)
        assert len(received) == 5
        sender.close()
        await receiver.stop()

    asyncio.run(main())


def test_each_router_replica_has_its_own_secret_and_certificate():
    first, second = StreamReceiver("127.0.0.1"), StreamReceiver("127.0.0.1")
    assert first.address[2] == first.secret and len(first.secret) == 32
    assert first.secret != second.secret
    assert first.address[3] == first.certificate.fingerprint != second.certificate.fingerprint
    assert first.open()[0][4] != first.open()[0][4], "a new key per stream"


def test_the_channel_works_on_uvloop_too():
    """Serve's replicas may run on uvloop, whose TLS and accept paths are its own: a stream
    from a sender to a receiver on uvloop, both ends (the first TLS design broke there)."""
    uvloop = pytest.importorskip("uvloop")

    async def main():
        receiver = StreamReceiver("127.0.0.1")
        await receiver.start()
        for _ in range(3):
            stream, call = incoming(receiver)
            conn = await StreamSender().connection(stream.reply_to[:4])
            assert await deliver(conn, ["on", "uvloop"], stream, call) == ["on", "uvloop"]
        await receiver.stop()

    uvloop.run(main())
