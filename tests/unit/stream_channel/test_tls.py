"""The stream channel's TLS (deployments/stream_channel/tls.py): the engine pins the router's
certificate, and the link carries no plaintext."""

from __future__ import annotations

import asyncio

import pytest

from deployments.stream_channel import ChannelClosed, StreamReceiver, StreamSender
from tests.support.stream_channel import agen, chunks, collect, incoming


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
