"""The stream channel (deployments/stream_channel/): frames, streams, and what a hostile
peer on the network can and cannot do, over real TLS sockets on loopback."""

from __future__ import annotations

import asyncio
import json
import ssl
import struct
import time

import pytest

from deployments.core.errors import APIError
from deployments.core.generation import GenerationChunk, TokenLogprob
from deployments.stream_channel import ChannelClosed, FrameTooLarge, IncomingStream, StreamReceiver, StreamSender
from deployments.stream_channel import receiver as receiver_module
from deployments.stream_channel.receiver import StreamOverflow, _ReceiverProtocol
from deployments.stream_channel.tls import client_context
from deployments.stream_channel.wire import HANDSHAKE_TIMEOUT_S, HELLO, MAX_FRAME_BYTES, decode_frames, encode_frame


def chunks(texts: list[str], first_prompt_tokens: int = 7) -> list[GenerationChunk]:
    out = [GenerationChunk(t, 1) for t in texts]
    out[0].prompt_tokens, out[0].replica_id = first_prompt_tokens, "replica-a"
    out[-1].finish_reason = "stop"
    return out


async def agen(items):
    for item in items:
        yield item


def test_frames_round_trip_and_a_partial_frame_waits_for_the_rest():
    first = GenerationChunk("Bonjour, 世界 🌍", 3, None, 12, "r1", cached_tokens=8)
    last = GenerationChunk("", 1, "length", index=2,
                           logprobs=[TokenLogprob("é", -0.5, [("é", -0.5), ("e", -1.25)])])
    wire = encode_frame("key-1", first) + encode_frame("key-2", last)
    buffer = bytearray(wire[:-5])
    assert decode_frames(buffer) == [("key-1", first)]
    buffer += wire[-5:]
    assert decode_frames(buffer) == [("key-2", last)]
    assert buffer == b""


def test_oversized_or_foreign_frames_are_refused_on_both_sides(monkeypatch):
    with pytest.raises(ValueError, match="limit"):
        decode_frames(bytearray(struct.pack(">I", MAX_FRAME_BYTES + 1)))
    for frame in ([1, "x", 1, None, 0, "", 0, None, 0], ["r", "x", 1, None, 0, ""], ["r", "x", 1, None, 0, "", 0, [1], 0],
                  {"r": 1}, 7):
        payload = json.dumps(frame).encode()
        with pytest.raises(ValueError, match="not a generation chunk"):
            decode_frames(bytearray(struct.pack(">I", len(payload)) + payload))
    monkeypatch.setattr("deployments.stream_channel.wire.MAX_FRAME_BYTES", 100)
    with pytest.raises(FrameTooLarge):
        encode_frame("k", GenerationChunk("x" * 200, 1))


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


def test_a_refusal_raises_before_any_chunk_and_a_failed_call_raises_mid_stream():
    async def main():
        receiver, sender, conn = await connected()
        stream, refused = incoming(receiver)
        refused.future.set_exception(APIError(400, "too long"))
        with pytest.raises(APIError, match="too long"):
            await stream.__anext__()

        stream, failing = incoming(receiver)
        conn.send(stream.reply_to[4], chunks(["one", "two"])[0])
        assert (await stream.__anext__()).text == "one"
        failing.future.set_exception(RuntimeError("ActorDiedError: replica gone"))
        with pytest.raises(RuntimeError, match="ActorDiedError"):
            await stream.__anext__()
        sender.close()
        await receiver.stop()

    asyncio.run(main())


def test_a_connection_lost_mid_stream_ends_that_stream_with_channel_closed():
    async def main():
        receiver, sender, conn = await connected()
        stream, call = incoming(receiver)
        conn.send(stream.reply_to[4], chunks(["one", "two"])[0])
        assert (await stream.__anext__()).text == "one"
        sender.close()  # the engine replica's process went away
        with pytest.raises(ChannelClosed):
            await asyncio.wait_for(stream.__anext__(), 5)
        stream.close()
        assert call.cancelled, "an unfinished stream cancels its engine call"
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


def test_sending_to_a_router_that_is_gone_fails():
    async def main():
        receiver = StreamReceiver("127.0.0.1")
        stream = IncomingStream(receiver)
        await receiver.start()
        await receiver.stop()
        with pytest.raises(OSError):
            await StreamSender().send_all(stream.reply_to, agen(chunks(["x"])))

    asyncio.run(main())


def test_an_engine_refuses_a_router_whose_certificate_is_not_the_one_in_the_request():
    async def main():
        receiver = StreamReceiver("127.0.0.1")
        impostor = StreamReceiver("127.0.0.1")
        await receiver.start()
        await impostor.start()
        # the request named `receiver`; something else answers at that port
        reply_to = (*impostor.address[:3], receiver.certificate.fingerprint, "key")
        with pytest.raises(ChannelClosed, match="another certificate"):
            await StreamSender().send_all(reply_to, agen(chunks(["secret text"])))
        await receiver.stop()
        await impostor.stop()

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


def test_a_host_this_machine_does_not_have_fails_at_construction_with_the_field_name():
    with pytest.raises(OSError, match="router.stream_host"):
        StreamReceiver("198.51.100.7")  # TEST-NET-2: documentation only, not a local address


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


def test_the_link_carries_no_plaintext():
    """A relay between engine and router records every byte: no completion text, no secret."""
    async def main():
        receiver = StreamReceiver("127.0.0.1")
        await receiver.start()
        captured = bytearray()

        async def pipe(reader, writer):
            while data := await reader.read(65536):
                captured.extend(data)
                writer.write(data)
                await writer.drain()
            writer.close()

        async def relay(client_reader, client_writer):
            router_reader, router_writer = await asyncio.open_connection(*receiver.address[:2])
            await asyncio.gather(pipe(client_reader, router_writer), pipe(router_reader, client_writer))

        tap = await asyncio.start_server(relay, "127.0.0.1", 0)
        stream, call = incoming(receiver)
        via_tap = (*tap.sockets[0].getsockname()[:2], *stream.reply_to[2:])
        text = "The launch code is 0451, said the model"
        sent = await StreamSender().send_all(via_tap, agen(chunks([text, " and nothing else."])))
        call.future.set_result(sent)
        assert "".join(c.text for c in await asyncio.wait_for(collect(stream), 5)).startswith(text)
        assert len(captured) > 0
        for plain in (b"launch code", b"0451", receiver.secret.encode(), stream.reply_to[4].encode()):
            assert plain not in captured, plain
        tap.close()
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


def test_each_router_replica_has_its_own_secret_and_certificate():
    first, second = StreamReceiver("127.0.0.1"), StreamReceiver("127.0.0.1")
    assert first.address[2] == first.secret and len(first.secret) == 32
    assert first.secret != second.secret
    assert first.address[3] == first.certificate.fingerprint != second.certificate.fingerprint
    assert first.open()[0][4] != first.open()[0][4], "a new key per stream"


def test_a_deadline_put_into_a_stream_ends_it_after_what_already_arrived():
    async def main():
        receiver, sender, conn = await connected()
        stream, _call = incoming(receiver)
        conn.send(stream.reply_to[4], GenerationChunk("early", 1))
        assert (await asyncio.wait_for(stream.__anext__(), 5)).text == "early"
        stream.fail(APIError(504, "too late"))
        with pytest.raises(APIError, match="too late"):
            await asyncio.wait_for(stream.__anext__(), 5)
        stream.close()
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
