"""A request's prefix as cumulative block hashes, and rendezvous hashing.

A request's prefix is a sequence of *blocks*, hashed cumulatively (``hashes[i]`` is
the hash of blocks ``0..i``), so "does anybody hold my first i blocks?" is one dict
lookup, not a walk over text:

* chat: one block per message, made of its role, its content and any other non-null
  field (tool calls, tool_call_id, name), so the same text under another role is a
  different prefix; a first block for ``tools`` when the request has any (GLM-4
  renders them into the prompt's head).
* completion string prompt: fixed chunks of ``chars_per_block`` characters.
* completion token ids: fixed chunks of ``tokens_per_block`` ids.

The hash is BLAKE2b (8 bytes), not Python's ``hash()``, which is salted per process:
keys must be equal in every router replica, and a test run is reproducible.
"""

from __future__ import annotations

import json
import struct
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

_MESSAGE_BASE = ("role", "content")
_LENGTHS = struct.Struct("<III")


@dataclass(slots=True, frozen=True)
class PrefixKeys:
    """A request's prefix as cumulative block hashes."""

    hashes: tuple[int, ...]
    """``hashes[i]``: the hash of the request's blocks ``0..i``."""
    anchors: tuple[int, ...]
    """Block indices (ascending) at which a prefix may identify a conversation."""
    partial_tail: bool = False
    """The last block is a partial fixed-size chunk (a longer prompt will not repeat it)."""


EMPTY = PrefixKeys((), ())


def _digest(h: Any) -> int:
    return int.from_bytes(h.copy().digest(), "little")


def _text(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if value is None:
        return b""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass")


def _field(h: Any, data: bytes) -> None:
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def stable_hash(kind: bytes, value: str) -> int:
    """A 64-bit hash of ``value`` that is the same in every process."""
    h = blake2b(digest_size=8, person=kind[:16])
    h.update(value.encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest(), "little")


def _salt(h: Any, adapter: str | None, cache_salt: str | None = None) -> Any:
    # vLLM's prefix cache keys blocks by adapter and by cache salt too: a prompt cached for
    # one adapter (or one tenant) is not cached for another, so it must not route as if it were.
    if adapter:
        _field(h, b"\x00adapter")
        _field(h, adapter.encode("utf-8", "surrogatepass"))
    if cache_salt:
        _field(h, b"\x00salt")
        _field(h, cache_salt.encode("utf-8", "surrogatepass"))
    return h


def _chat_keys(messages: Sequence[Any], tools: Any, min_blocks: int, adapter: str | None = None,
               cache_salt: str | None = None) -> PrefixKeys:
    h = _salt(blake2b(digest_size=8, person=b"glm-chat"), adapter, cache_salt)
    hashes: list[int] = []
    anchors: list[int] = []
    if tools:
        _field(h, b"\x00tools")
        _field(h, _text(tools))
        hashes.append(_digest(h))
    for message in messages:
        if isinstance(message, Mapping):
            role = message.get("role")
            content = message.get("content")
            extra = {k: v for k, v in message.items() if v is not None and k not in _MESSAGE_BASE}
        else:
            role, content, extra = None, message, None
        role_text = role if isinstance(role, str) else str(role)
        role_bytes = role_text.encode("utf-8", "surrogatepass")
        content_bytes = _text(content)
        extra_bytes = _text(extra) if extra else b""
        # One update per message; the lengths make the boundaries unambiguous.
        h.update(b"".join((_LENGTHS.pack(len(role_bytes), len(content_bytes), len(extra_bytes)),
                           role_bytes, content_bytes, extra_bytes)))
        index = len(hashes)
        hashes.append(int.from_bytes(h.copy().digest(), "little"))
        if role_text == "user" and index + 1 >= min_blocks:
            anchors.append(index)
    return PrefixKeys(tuple(hashes), tuple(anchors))


def _chunk_keys(prompt: str | Sequence[int], size: int, min_blocks: int, adapter: str | None = None,
                cache_salt: str | None = None) -> PrefixKeys:
    if isinstance(prompt, str):
        h = _salt(blake2b(digest_size=8, person=b"glm-text"), adapter, cache_salt)

        def encode(chunk: Any) -> bytes:
            return chunk.encode("utf-8", "surrogatepass")
    else:
        h = _salt(blake2b(digest_size=8, person=b"glm-ids"), adapter, cache_salt)

        def encode(chunk: Any) -> bytes:
            try:
                return array("q", chunk).tobytes()
            except (TypeError, OverflowError):
                return repr(list(chunk)).encode()
    hashes = []
    for start in range(0, len(prompt), size):
        h.update(encode(prompt[start:start + size]))
        hashes.append(_digest(h))
    partial = len(prompt) % size != 0
    whole = len(hashes) - 1 if partial else len(hashes)
    return PrefixKeys(tuple(hashes), tuple(range(min_blocks - 1, whole)), partial)


def prefix_keys(request: Any, chars_per_block: int, tokens_per_block: int, min_match_blocks: int) -> PrefixKeys:
    """The prefix keys of a :class:`~deployments.core.generation.GenerationRequest` (or any
    object with ``messages`` / ``prompt`` / ``tools``, and ``adapter`` and ``cache_salt``,
    which salt every key)."""
    messages = getattr(request, "messages", None)
    salts = (getattr(request, "adapter", None), getattr(request, "cache_salt", None))
    if messages is not None:
        return _chat_keys(messages, getattr(request, "tools", None), min_match_blocks, *salts)
    prompt = getattr(request, "prompt", None)
    if isinstance(prompt, str):
        return _chunk_keys(prompt, chars_per_block, min_match_blocks, *salts)
    if isinstance(prompt, Sequence) and prompt:
        return _chunk_keys(prompt, tokens_per_block, min_match_blocks, *salts)
    return EMPTY


def rendezvous(key: int, replicas: Mapping[str, Any] | Sequence[str], seeds: dict[str, int]) -> str:
    """Highest-random-weight choice of ``key`` among ``replicas``: the same in every
    process for the same key and replica set. The weight of a replica is splitmix64's
    finalizer of ``key ^ seed(replica)``, inlined (this loop runs per replica);
    ``seeds`` caches each replica's seed."""
    best, best_weight = "", -1
    for replica in replicas:
        seed = seeds.get(replica)
        if seed is None:
            seed = seeds[replica] = stable_hash(b"glm-replica", replica)
        x = key ^ seed
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
        if x > best_weight:
            best, best_weight = replica, x
    return best
