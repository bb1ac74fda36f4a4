"""What crosses the stream channel: addresses, the hello, and frames.

A frame is a 4-byte big-endian length and a JSON array ``[stream_key, *values]``: the
stream's key (random, per request, known only to the router and the engine it sent the
request to) and the values of a :class:`~deployments.core.generation.GenerationChunk` in its
fields' order (:func:`~deployments.core.generation.chunk_to_wire`; ``logprobs``: null, or
``[[token, logprob, [[token, logprob], ...]], ...]``).

JSON, not pickle: a frame from the network must never be able to run code in the router.
"""

from __future__ import annotations

import json
import struct

from deployments.core.generation import GenerationChunk, chunk_from_wire, chunk_to_wire

Address = tuple[str, int, str, str]
"""A router replica's stream channel: (host, port, secret, SHA-256 of its TLS certificate, hex)."""
ReplyTo = tuple[str, int, str, str, str]
"""Where one request's chunks go: the router's :data:`Address` and the stream's key."""

HELLO = b"GLMSTREAM2"
"""An engine's first bytes on a connection, before the router's secret."""
ACCEPTED = b"\x01"
"""The router's one-byte answer to a right hello: the engine sends frames only after it."""
SECRET_CHARS = 32
"""The router's secret: this many hex characters (128 bits)."""
HANDSHAKE_TIMEOUT_S = 0.9
"""A new connection's TLS handshake and hello must be done within this."""
MAX_FRAME_BYTES = 16 * 1024 * 1024
"""Neither side writes or reads a larger frame. The engine fails the one request whose
chunk would be larger; the router closes a connection that sends one (a broken peer)."""

_HEADER = struct.Struct(">I")


class ChannelClosed(ConnectionError):
    """The connection a stream's chunks were travelling on closed before its last chunk."""


class FrameTooLarge(ValueError):
    """A chunk does not fit in one frame."""


def address_of(reply_to: ReplyTo | list) -> Address:
    """The router address in ``reply_to`` (Ray may hand a tuple back as a list)."""
    return (reply_to[0], int(reply_to[1]), reply_to[2], reply_to[3])


def encode_frame(stream_key: str, chunk: GenerationChunk) -> bytes:
    """One chunk as a frame (the engine side's per-chunk work); :class:`FrameTooLarge`
    past :data:`MAX_FRAME_BYTES`."""
    payload = json.dumps([stream_key, *chunk_to_wire(chunk)], ensure_ascii=False, separators=(",", ":")).encode()
    if len(payload) > MAX_FRAME_BYTES:
        raise FrameTooLarge(f"a chunk of {len(payload)} bytes is over the stream channel's {MAX_FRAME_BYTES}")
    return _HEADER.pack(len(payload)) + payload


def decode_frames(buffer: bytearray) -> list[tuple[str, GenerationChunk]]:
    """Take every complete frame off the front of ``buffer``; a partial frame stays.

    Raises ValueError on a frame that is too large or not a chunk.
    """
    frames = []
    offset = 0
    end = len(buffer)
    while end - offset >= _HEADER.size:
        (size,) = _HEADER.unpack_from(buffer, offset)
        if size > MAX_FRAME_BYTES:
            raise ValueError(f"frame of {size} bytes is over the {MAX_FRAME_BYTES}-byte limit")
        if end - offset - _HEADER.size < size:
            break
        start = offset + _HEADER.size
        try:
            stream_key, *values = json.loads(buffer[start:start + size])
            chunk = chunk_from_wire(values)
        except (TypeError, ValueError) as exc:  # not an array, wrong arity or shape
            raise ValueError(f"frame is not a generation chunk: {exc}") from None
        if not isinstance(stream_key, str):
            raise ValueError("frame is not a generation chunk: its stream key is not a string")
        frames.append((stream_key, chunk))
        offset = start + size
    del buffer[:offset]
    return frames
