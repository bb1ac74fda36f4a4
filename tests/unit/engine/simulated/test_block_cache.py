"""The simulated engine's KV blocks (deployments/engine/simulated/block_cache.py): vLLM's block
hashes, cache hits and eviction order."""

from __future__ import annotations

from deployments.engine.simulated.block_cache import BlockPool, block_hashes
from tests.support.simulated import BS


def test_block_hashes_are_vllms():
    from vllm.utils.hashing import sha256
    from vllm.v1.core import kv_cache_utils

    kv_cache_utils.init_none_hash(sha256)
    tokens = list(range(100, 111))  # two full blocks of 4 and a partial one
    expected, parent = [], None
    for begin in (0, 4):
        parent = kv_cache_utils.hash_block_tokens(sha256, parent, tokens[begin:begin + 4], ("lora", "a"))
        expected.append(bytes(parent))
    assert block_hashes(tokens, BS, ("lora", "a")) == expected
    # extending from the second block gives the same chain
    assert block_hashes(tokens, BS, ("lora", "a"), start=1, parent=expected[0]) == expected[1:]
    assert block_hashes(tokens, BS) != expected


def test_lookup_stops_at_the_first_miss_and_keeps_the_last_token_computed():
    pool = BlockPool(8)
    tokens = list(range(12))
    hashes = block_hashes(tokens, BS)
    blocks = pool.allocate(3)
    pool.cache_full(blocks, hashes)
    pool.free(blocks)
    # 12 tokens: at most (12 - 1) // 4 = 2 blocks may hit, though all 3 are cached
    assert pool.computed_blocks(hashes, 12, BS) == blocks[:2]
    assert (pool.queries, pool.hits) == (12, 8)
    other = block_hashes([0, 1, 2, 3, 9, 9, 9, 9, 8], BS)
    assert pool.computed_blocks(other, 9, BS) == blocks[:1]


def test_eviction_takes_the_least_recently_freed_and_a_request_tail_first():
    pool = BlockPool(4)
    a = pool.allocate(2)
    pool.cache_full(a, block_hashes(list(range(8)), BS))
    b = pool.allocate(2)
    pool.cache_full(b, block_hashes(list(range(50, 58)), BS))
    pool.free(a)  # a's tail block is queued before its head
    pool.free(b)
    assert pool.allocate(1) == [a[1]]
    assert not pool.cached(block_hashes(list(range(8)), BS)[1])
    assert pool.cached(block_hashes(list(range(8)), BS)[0])
    assert pool.allocate(1) == [a[0]]
    assert pool.evictions == 2


def test_a_hit_block_in_use_is_not_evicted_and_an_unfilled_block_is_reused_first():
    pool = BlockPool(3)
    a = pool.allocate(2)
    hashes = block_hashes(list(range(8)), BS)
    pool.cache_full(a[:1], hashes[:1])  # a[1] never filled
    pool.free(a)
    assert pool.allocate(1) == [a[1]]  # the unhashed one, though freed after a[0]
    hit = pool.computed_blocks(hashes, 8, BS)
    pool.touch(hit)
    assert pool.free_blocks == 1
    assert pool.allocate(1) != hit


def test_a_cache_salt_enters_the_first_block_as_vllms_does():
    from vllm.utils.hashing import sha256
    from vllm.v1.core import kv_cache_utils

    kv_cache_utils.init_none_hash(sha256)
    tokens = list(range(100, 108))
    first = kv_cache_utils.hash_block_tokens(sha256, None, tokens[:4], (("cache_salt", "tenant:a"),))
    second = kv_cache_utils.hash_block_tokens(sha256, first, tokens[4:8], None)
    assert block_hashes(tokens, BS, cache_salt="tenant:a") == [bytes(first), bytes(second)]
    unsalted = block_hashes(tokens, BS)
    other = block_hashes(tokens, BS, cache_salt="tenant:b")
    assert not set(unsalted) & set(other) and not set(other) & {bytes(first), bytes(second)}, \
        "another salt shares no block"
