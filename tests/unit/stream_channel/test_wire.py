"""The stream channel's frames (deployments/stream_channel/wire.py): round trips, partial frames,
and what is refused."""

from __future__ import annotations

import json
import struct

import pytest

from deployments.core.generation import GenerationChunk, TokenLogprob
from deployments.stream_channel import FrameTooLarge
from deployments.stream_channel.wire import MAX_FRAME_BYTES, decode_frames, encode_frame


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
