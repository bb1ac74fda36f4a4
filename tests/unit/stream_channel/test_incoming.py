"""A stream the router waits for (deployments/stream_channel/incoming.py): refusals, failures,
lost connections and deadlines, over real TLS sockets on loopback."""

from __future__ import annotations

import asyncio

import pytest

from deployments.core.errors import APIError
from deployments.core.generation import GenerationChunk
from deployments.stream_channel import ChannelClosed
from tests.support.stream_channel import chunks, connected, incoming


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
