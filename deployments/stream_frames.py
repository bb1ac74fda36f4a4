"""The stream channel's frames: a 4-byte big-endian length and a JSON array
``[request_id, *values]``, the values of a :class:`~deployments.generation.GenerationChunk`
in its fields' order (:func:`~deployments.generation.chunk_to_wire`; ``logprobs``: null,
or ``[[token, logprob, [[token, logprob], ...]], ...]``).

JSON, not pickle: a frame from the network must never be able to run code in the router.
"""

from __future__ import annotations

import json
import struct

from deployments.generation import GenerationChunk, chunk_from_wire, chunk_to_wire

_HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 16 * 1024 * 1024
"""Larger frames mean a broken or hostile peer: the connection is closed."""


def encode_frame(request_id: str, chunk: GenerationChunk) -> bytes:
    """One chunk as a frame (the engine side's per-chunk work)."""
    payload = json.dumps([request_id, *chunk_to_wire(chunk)], ensure_ascii=False, separators=(",", ":")).encode()
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
            request_id, *values = json.loads(buffer[start:start + size])
            chunk = chunk_from_wire(values)
        except (TypeError, ValueError) as exc:  # not an array, wrong arity or shape
            raise ValueError(f"frame is not a generation chunk: {exc}") from None
        if not isinstance(request_id, str):
            raise ValueError("frame is not a generation chunk: its request id is not a string")
        frames.append((request_id, chunk))
        offset = start + size
    del buffer[:offset]
    return frames
