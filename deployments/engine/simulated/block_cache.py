"""A KV block pool with vLLM's prefix cache: the same block hashes, the same LRU eviction.

What vLLM 0.32 does (``vllm/v1/core/block_pool.py`` and ``kv_cache_utils.py``), kept here
without vLLM or torch so that dozens of simulated engines fit one machine:

* a request's tokens fill fixed-size blocks; a *full* block gets a hash chained from its
  parent's: ``sha256(pickle((parent_hash, tuple(block_tokens), extra_keys)))``, the first
  block's parent being ``sha256(pickle("vllm-none-hash"))``. ``extra_keys`` carries the LoRA
  adapter's name, so an adapter's blocks never match the base model's;
* a lookup takes the longest run of the request's block hashes found in the cache, at most
  ``(num_tokens - 1) // block_size`` blocks: the last prompt token is always computed, so
  the engine has logits to sample from;
* a block in use has a reference count; at zero it joins the *free queue* but keeps its
  hash, so a later request can still hit it. New blocks come from the front of the free
  queue, and taking one that holds a hash evicts that hash: least recently freed first;
* a finished request's blocks are freed tail first, so its last blocks are evicted before
  its first (which other requests are more likely to share); a block that never filled
  (no hash) goes to the front, to be reused first.
"""

from __future__ import annotations

import hashlib
import pickle
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

BlockHash = bytes


def _sha256(value: Any) -> BlockHash:
    return hashlib.sha256(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)).digest()


NONE_HASH: BlockHash = _sha256("vllm-none-hash")
"""The parent hash of a sequence's first block, as vLLM seeds it."""


def block_hashes(token_ids: Sequence[int], block_size: int, extra_keys: tuple[Any, ...] | None = None,
                 cache_salt: str | None = None, start: int = 0, parent: BlockHash | None = None) -> list[BlockHash]:
    """The chained hashes of the full blocks of ``token_ids``, from block index ``start``
    (whose parent hash is ``parent``) on. ``extra_keys`` (an adapter's name) enters every
    block; ``cache_salt`` the first one's, as vLLM's ``cache_salt`` does, and through the
    chain every later one."""
    hashes: list[BlockHash] = []
    parent = NONE_HASH if parent is None else parent
    for begin in range(start * block_size, len(token_ids) - block_size + 1, block_size):
        keys = extra_keys
        if begin == 0 and cache_salt:
            keys = (*(extra_keys or ()), ("cache_salt", cache_salt))
        parent = _sha256((parent, tuple(token_ids[begin:begin + block_size]), keys))
        hashes.append(parent)
    return hashes


class BlockPool:
    """``num_blocks`` KV blocks with a hash-keyed prefix cache (the module docstring).

    Blocks are ints; a request holds a list of them, its first ``len(hashes)`` full."""

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError("a block pool needs at least one block")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self._ref = [0] * num_blocks
        self._hash: list[BlockHash | None] = [None] * num_blocks
        self._cached: dict[BlockHash, int] = {}
        # Insertion order is eviction order: the first key is taken first.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.queries = 0
        self.hits = 0
        self.evictions = 0

    # ---- what the scheduler asks -------------------------------------------------
    @property
    def free_blocks(self) -> int:
        """Blocks a new allocation may take (cached ones with no user included)."""
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of blocks some request is using, 0 to 1 (vLLM's ``kv_cache_usage``)."""
        return 1.0 - len(self._free) / self.num_blocks

    def cached(self, block_hash: BlockHash) -> bool:
        return block_hash in self._cached

    def computed_blocks(self, hashes: Sequence[BlockHash], num_tokens: int, block_size: int) -> list[int]:
        """The cached blocks of the longest cached prefix of ``hashes`` (a request of
        ``num_tokens`` tokens), counted as a prefix-cache query of ``num_tokens`` and a hit of
        the blocks' tokens. Takes no reference: :meth:`touch` does, once the request is admitted."""
        self.queries += num_tokens
        if not self.enable_caching:
            return []
        found: list[int] = []
        for block_hash in hashes[:max(0, (num_tokens - 1) // block_size)]:
            block = self._cached.get(block_hash)
            if block is None:
                break
            found.append(block)
        self.hits += len(found) * block_size
        return found

    def unused(self, blocks: Sequence[int]) -> int:
        """How many of ``blocks`` no request uses (they sit in the free queue)."""
        return sum(1 for block in blocks if self._ref[block] == 0)

    def touch(self, blocks: Sequence[int]) -> None:
        """Take a reference on cached blocks a request reuses (out of the free queue)."""
        for block in blocks:
            if self._ref[block] == 0:
                self._free.pop(block, None)
            self._ref[block] += 1

    def allocate(self, count: int) -> list[int]:
        """``count`` fresh blocks from the front of the free queue, evicting their hashes;
        ValueError when fewer are free (the scheduler checks :attr:`free_blocks` first)."""
        if count > len(self._free):
            raise ValueError(f"{count} blocks asked, {len(self._free)} free")
        blocks = []
        for _ in range(count):
            block, _ = self._free.popitem(last=False)
            old = self._hash[block]
            if old is not None:
                if self._cached.get(old) == block:
                    del self._cached[old]
                self._hash[block] = None
                self.evictions += 1
            self._ref[block] = 1
            blocks.append(block)
        return blocks

    def cache_full(self, blocks: Sequence[int], hashes: Sequence[BlockHash]) -> None:
        """Record the hashes of a request's full blocks (``blocks[i]`` holds ``hashes[i]``).
        A hash already cached in another block keeps that block, as in vLLM."""
        if not self.enable_caching:
            return
        for block, block_hash in zip(blocks, hashes):
            if self._hash[block] is None:
                self._hash[block] = block_hash
                self._cached.setdefault(block_hash, block)

    def free(self, blocks: Sequence[int]) -> None:
        """Drop a request's references, tail first; a block nobody uses joins the free
        queue, at the back if it holds a hash (still a cache hit until taken), else the front."""
        for block in reversed(blocks):
            self._ref[block] -= 1
            if self._ref[block] == 0:
                self._free[block] = None
                if self._hash[block] is None:
                    self._free.move_to_end(block, last=False)

    def reset_counters(self) -> tuple[int, int]:
        """(queries, hits) since the last call, for one engine step's statistics."""
        counts = (self.queries, self.hits)
        self.queries = self.hits = 0
        return counts
