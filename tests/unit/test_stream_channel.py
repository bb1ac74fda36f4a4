"""The stream channel over real loopback sockets: framing, demultiplexing, and every way a stream ends."""

from __future__ import annotations

import asyncio
import json
import struct

import pytest

from deployments import stream_channel
from deployments.errors import APIError
from deployments.generation import GenerationChunk, TokenLogprob
from deployments.stream_channel import HELLO, ChannelClosed, IncomingStream, StreamReceiver, StreamSender
from deployments.stream_frames import MAX_FRAME_BYTES, decode_frames, encode_frame


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
    wire = encode_frame("id-1", first) + encode_frame("id-2", last)
    buffer = bytearray(wire[:-5])
    assert decode_frames(buffer) == [("id-1", first)]
    buffer += wire[-5:]
    assert decode_frames(buffer) == [("id-2", last)]
    assert buffer == b""


def test_oversized_or_foreign_frames_are_refused():
    with pytest.raises(ValueError, match="limit"):
        decode_frames(bytearray(struct.pack(">I", MAX_FRAME_BYTES + 1)))
    for frame in ([1, "x", 1, None, 0, "", 0, None], ["r", "x", 1, None, 0, ""], ["r", "x", 1, None, 0, "", 0, [1]]):
        payload = json.dumps(frame).encode()
        with pytest.raises(ValueError, match="not a generation chunk"):
            decode_frames(bytearray(struct.pack(">I", len(payload)) + payload))


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


def incoming(receiver: StreamReceiver, request_id: str) -> tuple[IncomingStream, FakeCall]:
    """A stream the router waits for, and the engine call behind it."""
    call = FakeCall()
    return IncomingStream(receiver, request_id, call, call.cancel), call


async def connected():
    """A listening receiver, and a sender with its connection to it."""
    receiver = StreamReceiver("127.0.0.1")
    sender = StreamSender()
    conn = await sender.connection(await receiver.start())
    return receiver, sender, conn


async def deliver(conn, request_id: str, texts: list[str], stream: IncomingStream, call: FakeCall) -> list[str]:
    """Send a whole reply as the engine would, end its call, and return the texts the router read."""
    for chunk in chunks(texts):
        conn.send(request_id, chunk)
    call.future.set_result(len(texts))
    return [c.text for c in await asyncio.wait_for(collect(stream), 5)]


async def collect(stream: IncomingStream) -> list:
    return [item async for item in stream]


def test_two_interleaved_streams_each_get_their_own_chunks_in_order():
    async def main():
        receiver = StreamReceiver("127.0.0.1")
        starts = await asyncio.gather(receiver.start(), receiver.start())  # two first requests at once
        address = starts[0]
        assert starts[1] == address
        sender = StreamSender()
        calls = {rid: FakeCall() for rid in ("a", "b")}
        streams = {rid: IncomingStream(receiver, rid, calls[rid], calls[rid].cancel) for rid in calls}
        expected = {"a": chunks(["A1", "A2", "A3"]), "b": chunks(["B1", "B2"])}

        async def engine(rid):
            sent = await sender.send_all(address, rid, agen(expected[rid]))
            calls[rid].future.set_result(sent)  # the call may return before the frames arrive

        results = await asyncio.gather(collect(streams["a"]), collect(streams["b"]), engine("a"), engine("b"))
        assert results[0] == expected["a"] and results[1] == expected["b"]
        assert receiver.open_streams == 2
        for stream in streams.values():
            stream.close()
        assert receiver.open_streams == 0 and not any(c.cancelled for c in calls.values())
        sender.close()
        await receiver.stop()

    asyncio.run(main())


def test_a_refusal_raises_before_any_chunk_and_a_failed_call_raises_mid_stream():
    async def main():
        receiver, sender, conn = await connected()
        stream, refused = incoming(receiver, "r")
        refused.future.set_exception(APIError(400, "too long"))
        with pytest.raises(APIError, match="too long"):
            await stream.__anext__()

        stream, failing = incoming(receiver, "f")
        conn.send("f", chunks(["one", "two"])[0])
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
        stream, call = incoming(receiver, "s")
        conn.send("s", chunks(["one", "two"])[0])
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
        _, rogue = await asyncio.open_connection(*receiver.address[:2])
        rogue.write(HELLO + receiver.secret.encode() + struct.pack(">I", 5) + b"nope!")
        await rogue.drain()

        stream, call = incoming(receiver, "good")
        conn.send("nobody-waits-for-this", GenerationChunk("lost", 1, "stop"))
        assert await deliver(conn, "good", ["ok"], stream, call) == ["ok"]
        sender.close()
        await receiver.stop()

    asyncio.run(main())


def test_sending_to_a_router_that_is_gone_fails():
    async def main():
        receiver = StreamReceiver("127.0.0.1")
        address = await receiver.start()
        await receiver.stop()
        with pytest.raises(OSError):
            await StreamSender().send_all(address, "r", agen(chunks(["x"])))

    asyncio.run(main())


def test_a_router_that_drops_the_connection_stops_the_generation():
    async def main():
        server = await asyncio.start_server(lambda reader, writer: writer.close(), "127.0.0.1", 0)
        address = (*server.sockets[0].getsockname()[:2], "secret")
        closed = asyncio.Event()

        async def endless_generation():
            try:
                while True:
                    yield GenerationChunk("x" * 1000, 1)
                    await asyncio.sleep(0.01)
            finally:
                closed.set()  # vLLM's generate aborts the request when its generator is closed

        with pytest.raises(ChannelClosed):
            await asyncio.wait_for(StreamSender().send_all(address, "r", endless_generation()), 10)
        assert closed.is_set()
        server.close()

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
        stream, call = incoming(second, "after-restart")
        new_conn = await sender.connection(await second.start())
        assert new_conn is not conn
        assert first_address not in sender._connections
        assert await deliver(new_conn, "after-restart", ["hello"], stream, call) == ["hello"]
        sender.close()
        await second.stop()

    asyncio.run(main())


def test_streams_the_router_closed_early_are_not_remembered_forever():
    from deployments.stream_channel import _ReceiverProtocol

    async def main():
        receiver = StreamReceiver("127.0.0.1")
        protocol = _ReceiverProtocol(receiver)
        for i in range(200):  # clients that left after their first chunk
            stream, _ = incoming(receiver, f"left-{i}")
            protocol.data_received(encode_frame(f"left-{i}", GenerationChunk("x", 1)))
            stream.close()
        protocol.data_received(encode_frame("late", GenerationChunk("y", 1)))
        assert len(protocol._seen) <= 64
        await receiver.stop()

    asyncio.run(main())


async def _closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """Whether the other end closed the connection (EOF within a few seconds)."""
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except (ConnectionResetError, asyncio.TimeoutError):
        return isinstance(reader.exception(), ConnectionResetError) if reader.exception() else False


@pytest.mark.parametrize("opening", [b"", b"GLMSTREAM1" + b"0" * 32, b"HELLO? " * 10])
def test_a_connection_without_the_secret_cannot_inject_a_chunk(opening):
    async def main():
        receiver, sender, conn = await connected()
        stream, call = incoming(receiver, "live-request")
        reader, rogue = await asyncio.open_connection(*receiver.address[:2])
        # It knows the live request id, and sends a well-formed frame for it.
        rogue.write(opening + encode_frame("live-request", GenerationChunk("INJECTED", 1, "stop")))
        await rogue.drain()
        assert await _closed_by_peer(reader), "a connection that does not open with the secret is closed"
        assert await deliver(conn, "live-request", ["real"], stream, call) == ["real"]
        sender.close()
        await receiver.stop()

    asyncio.run(main())


def test_a_silent_connection_is_closed_and_pending_connections_are_capped(monkeypatch):
    monkeypatch.setattr(stream_channel, "HELLO_TIMEOUT_S", 0.3)
    monkeypatch.setattr(stream_channel, "MAX_PENDING", 2)

    async def main():
        receiver, sender, conn = await connected()
        silent = [await asyncio.open_connection(*receiver.address[:2]) for _ in range(3)]
        assert await _closed_by_peer(silent[2][0]), "past the pending cap, closed at once"
        assert await _closed_by_peer(silent[0][0]), "no hello within the timeout: closed"
        assert receiver._pending == 0
        stream, call = incoming(receiver, "after")
        assert await deliver(conn, "after", ["still", "works"], stream, call) == ["still", "works"]
        sender.close()
        await receiver.stop()

    asyncio.run(main())


def test_each_router_replica_has_its_own_secret_in_its_address():
    first, second = StreamReceiver("127.0.0.1"), StreamReceiver("127.0.0.1")
    assert first.address[2] == first.secret and len(first.secret) == 32
    assert first.secret != second.secret


def test_a_deadline_put_into_a_stream_ends_it_after_what_already_arrived():
    async def main():
        receiver, sender, conn = await connected()
        stream, _call = incoming(receiver, "slow")
        conn.send("slow", GenerationChunk("early", 1))
        assert (await asyncio.wait_for(stream.__anext__(), 5)).text == "early"
        stream.fail(APIError(504, "too late"))
        with pytest.raises(APIError, match="too late"):
            await asyncio.wait_for(stream.__anext__(), 5)
        stream.close()
        sender.close()
        await receiver.stop()

    asyncio.run(main())
