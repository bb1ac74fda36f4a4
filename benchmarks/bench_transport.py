"""What one streamed chunk costs to carry from an engine replica to the router, three ways.

    python -m benchmarks.bench_transport                 # make bench-transport
    python -m benchmarks.bench_transport --chunks 400    # seconds (run by make test)

A producer deployment sends text chunks to a consumer deployment as fast as they are
taken, through

* ``ray``: a streaming ``DeploymentHandle`` call, one Ray object per chunk (how
  glm-serve streamed before the stream channel), and
* ``channel``: ``EngineDeployment.generate``'s path, a Serve call that carries the
  request while the chunks go over :mod:`deployments.stream_channel` (TLS 1.3), and
* ``zmq-curve``: the same frames over ZeroMQ with CURVE encryption (PUSH to a PULL socket
  per router, libzmq's I/O thread doing the crypto), the design measured beside TLS for
  the stream channel and not adopted (docs/measurements.md says why).

It reports chunks per second and the CPU microseconds each side spends per chunk.
No model runs: this is the serving layer's per-chunk cost alone, which on a GPU node
(thousands of chunks a second per engine replica) is work on the engine replica's
one Python thread, beside vLLM's own output processing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

from ray import serve

from benchmarks.harness.cpu_usage import own_cpu_seconds
from deployments.core.generation import GenerationChunk
from deployments.stream_channel import IncomingStream, StreamReceiver, StreamSender

MODES = ("ray", "channel", "zmq-curve")


class _CurveReceiver:
    """The router side of the ZeroMQ candidate: a CURVE server PULL socket, frames routed
    to per-stream queues by their key, as deployments.stream_channel's receiver does."""

    def __init__(self) -> None:
        import zmq
        import zmq.asyncio

        self.public, secret = zmq.curve_keypair()
        self._socket = zmq.asyncio.Context.instance().socket(zmq.PULL)
        self._socket.curve_server = True
        self._socket.curve_secretkey = secret
        self._socket.curve_publickey = self.public
        port = self._socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self._queues: dict[str, asyncio.Queue] = {}
        self._task: asyncio.Task | None = None

    def open(self, key: str) -> asyncio.Queue:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._pump())
        queue = self._queues[key] = asyncio.Queue()
        return queue

    def close(self, key: str) -> None:
        self._queues.pop(key, None)

    async def _pump(self) -> None:
        from deployments.stream_channel.wire import decode_frames

        while True:
            buffer = bytearray(await self._socket.recv())
            for key, chunk in decode_frames(buffer):
                queue = self._queues.get(key)
                if queue is not None:
                    queue.put_nowait(chunk)


class _CurveSender:
    """The engine side of the ZeroMQ candidate: one CURVE client PUSH socket per router."""

    def __init__(self) -> None:
        self._sockets: dict[str, object] = {}

    def socket(self, endpoint: str, server_public: bytes):
        import zmq
        import zmq.asyncio

        sock = self._sockets.get(endpoint)
        if sock is None:
            sock = zmq.asyncio.Context.instance().socket(zmq.PUSH)
            public, secret = zmq.curve_keypair()
            sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = secret, public, server_public
            sock.connect(endpoint)
            self._sockets[endpoint] = sock
        return sock


async def _chunks(count: int):
    for i in range(count):
        yield GenerationChunk("word ", 1, None if i < count - 1 else "length")
        await asyncio.sleep(0)  # let other streams' chunks interleave, as a real engine's do


@serve.deployment(max_ongoing_requests=1024)
class Producer:
    """Stands where the engine replica stands."""

    def __init__(self) -> None:
        self._sender = StreamSender()
        self._curve = _CurveSender()

    async def stream(self, count: int):
        async for chunk in _chunks(count):
            yield chunk

    async def generate(self, count: int, reply_to) -> int:
        return await self._sender.send_all(reply_to, _chunks(count))

    async def generate_curve(self, count: int, endpoint: str, server_public: bytes, key: str) -> int:
        from deployments.stream_channel.wire import encode_frame

        sock = self._curve.socket(endpoint, server_public)
        sent = 0
        async for chunk in _chunks(count):
            await sock.send(encode_frame(key, chunk))
            sent += 1
        return sent

    def cpu_s(self) -> float:
        return own_cpu_seconds()


@serve.deployment(max_ongoing_requests=1024)
class Consumer:
    """Stands where the router stands."""

    def __init__(self, producer) -> None:
        self._producer = producer
        self._producer_stream = producer.options(stream=True)
        self._receiver = StreamReceiver("127.0.0.1")
        self._curve: _CurveReceiver | None = None

    async def _one(self, mode: str, count: int) -> int:
        received = 0
        if mode == "ray":
            async for _ in self._producer_stream.stream.remote(count):
                received += 1
            return received
        if mode == "zmq-curve":
            return await self._one_curve(count)
        await self._receiver.start()
        stream = IncomingStream(self._receiver)
        call = self._producer.generate.remote(count, stream.reply_to)
        stream.attach(call, call.cancel)
        try:
            async for chunk in stream:
                received += 1
                if chunk.finish_reason is not None:
                    break
        finally:
            stream.close()
        return received

    async def _one_curve(self, count: int) -> int:
        if self._curve is None:
            self._curve = _CurveReceiver()
        key = uuid.uuid4().hex
        queue = self._curve.open(key)
        call = self._producer.generate_curve.remote(count, self._curve.endpoint, self._curve.public, key)
        received = 0
        try:
            while received < count:
                await queue.get()
                received += 1
            await call
        finally:
            self._curve.close(key)
        return received

    async def run(self, mode: str, chunks: int, streams: int) -> dict:
        producer_start, own_start, start = await self._producer.cpu_s.remote(), own_cpu_seconds(), time.perf_counter()
        received = sum(await asyncio.gather(*(self._one(mode, chunks // streams) for _ in range(streams))))
        wall_s = time.perf_counter() - start
        producer_s, own_s = await self._producer.cpu_s.remote() - producer_start, own_cpu_seconds() - own_start
        return {"mode": mode, "streams": streams, "chunks": received, "wall_s": round(wall_s, 3),
                "chunks_per_s": round(received / wall_s), "engine_side_us_per_chunk": round(producer_s / received * 1e6, 1),
                "router_side_us_per_chunk": round(own_s / received * 1e6, 1)}


def main(argv: list[str] | None = None) -> int:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=8000, help="chunks per run, split over the streams")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="each mode runs this often, interleaved")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)

    # A cluster of its own: joining a running one (the e2e suite's, or a user's glm-serve)
    # would measure beside its load, and serve.shutdown() below would take its apps down.
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        handle = serve.run(Consumer.bind(Producer.bind()), name="chunk-transport", route_prefix=None)
        rows = []
        for round_ in range(args.rounds):
            for mode in MODES:
                row = handle.run.remote(mode, args.chunks, args.streams).result()
                rows.append(row)
                print(f"round {round_ + 1}/{args.rounds} {mode:>7}: {row['chunks_per_s']:>7} chunks/s, "
                      f"engine side {row['engine_side_us_per_chunk']:>6} us/chunk, "
                      f"router side {row['router_side_us_per_chunk']:>6} us/chunk", file=sys.stderr)
    finally:
        serve.shutdown()
        ray.shutdown()
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0 if all(r["chunks"] == args.chunks // args.streams * args.streams for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
