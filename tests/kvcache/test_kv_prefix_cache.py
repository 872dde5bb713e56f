"""Prefix cache: hash chains, exact matches only, LRU reclaim, decode-filled blocks, trace ids."""

from __future__ import annotations

from kvcache_shadow import ShadowCache, new_manager

from kvcache.prefix_cache import PrefixCache


def test_chain_keys_depend_on_everything_before():
    cache = PrefixCache(8, 4)
    a = cache.token_keys([1, 2, 3, 4, 5, 6, 7, 8], 0, 2, None)
    b = cache.token_keys([9, 9, 9, 9, 5, 6, 7, 8], 0, 2, None)
    assert a[0][0] != b[0][0] and a[1][0] != b[1][0]  # same second block, other parent
    assert cache.token_keys([1, 2, 3, 4], 0, 1, None, extra_key="lora")[0] != a[0]


def test_a_hash_collision_is_a_miss_not_a_wrong_block():
    cache = PrefixCache(8, 4)
    (h, key), = cache.token_keys([1, 2, 3, 4], 0, 1, None)
    (_, other), = cache.token_keys([4, 3, 2, 1], 0, 1, None)
    assert cache.register(5, h, key)
    assert cache.lookup(h, key) == 5
    assert cache.lookup(h, other) is None  # same hash, other tokens: no hit
    assert cache.match([(h, other)]) == []
    assert not cache.register(6, h, other)  # the hash stays with the first block
    cache.check()


def test_trace_ids_key_engine_sub_blocks():
    cache = PrefixCache(64, 16, prefix_id_block_size=512)
    keys = cache.id_keys([7, 8], 64)
    assert [k[3:] for _, k in keys[:2]] == [(0, 7), (16, 7)]
    assert keys[31][1][3:] == (496, 7) and keys[32][1][3:] == (0, 8)
    big = PrefixCache(4, 1024, prefix_id_block_size=512)
    assert big.id_keys([7, 8, 9, 10], 2)[1][1][3:] == (0, 9, 10)  # one engine block, two ids
    assert cache.num_id_blocks(1000, 2) == 62 and cache.num_id_blocks(5000, 2) == 64


def test_hit_reuses_blocks_and_never_covers_the_last_token():
    mgr = new_manager(16, 4, enable_prefix_caching=True)
    prompt = list(range(12))
    assert mgr.allocate("a", 12, token_ids=prompt) == 0
    assert mgr.allocate("b", 12, token_ids=list(prompt)) == 8  # not 12: the last token is computed
    assert mgr.block_table("b")[:2] == mgr.block_table("a")[:2]
    assert mgr.allocate("c", 13, token_ids=prompt + [99]) == 12
    assert mgr.allocate("d", 13, token_ids=prompt + [99], extra_key="other-adapter") == 0
    s = mgr.stats()
    assert (s["prefix_hit_blocks"], s["prefix_hit_tokens"], s["prefix_query_blocks"]) == (5, 20, 14)
    assert s["prefix_miss_blocks"] == 9
    mgr.check_invariants()


def test_freed_blocks_stay_cached_until_reclaimed_lru_tail_first():
    mgr = new_manager(7, 4, enable_prefix_caching=True)
    prompt = list(range(17))  # 4 full blocks + 1
    mgr.allocate("a", 17, token_ids=prompt)
    table = mgr.block_table("a")
    mgr.free("a")
    s = mgr.stats()
    assert (s["blocks_cached"], s["blocks_free"], s["blocks_used"]) == (4, 3, 0)
    # a 4-block request takes the 3 free blocks, then the cached tail block of the chain
    mgr.allocate("x", 16)
    assert mgr.stats()["cached_block_evictions"] == 1 and table[3] in mgr.block_table("x")
    mgr.free("x")
    assert mgr.allocate("b", 17, token_ids=prompt) == 12  # the head of the chain is still there
    assert mgr.block_table("b")[:3] == table[:3]
    mgr.check_invariants()


def test_blocks_filled_during_decode_are_cached_from_the_growing_token_list():
    cache = ShadowCache(16, 4, enable_prefix_caching=True)
    mgr = cache.mgr
    tokens = cache.tokens["a"] = [1, 2, 3, 4, 5, 6]
    mgr.allocate("a", 6, token_ids=tokens)
    cache.write("a", mgr.slot_mapping("a", 0, 6), list(range(6)))
    for tok in (7, 8, 9):
        tokens.append(tok)  # the engine appends the sampled token, then runs it
        cache.write("a", mgr.append_slots("a"), [len(tokens) - 1])
    follow = cache.tokens["b"] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert mgr.allocate("b", 10, token_ids=follow) == 8
    cache.write("b", mgr.slot_mapping("b", 8, 10), [8, 9])
    cache.verify("b", set(range(10)))


def test_trace_ids_hit_across_requests_with_a_smaller_engine_block():
    mgr = new_manager(200, 16, enable_prefix_caching=True, prefix_id_block_size=512)
    assert mgr.allocate(1, 1000, prefix_block_ids=[1, 2]) == 0
    mgr.free(1)
    assert mgr.allocate(2, 1100, prefix_block_ids=[1, 3, 4]) == 512  # trace block 1 = 32 blocks
    assert mgr.allocate(3, 1000, prefix_block_ids=[1, 2]) == 992  # 62 full blocks; not the last token
    assert mgr.stats()["prefix_hit_blocks"] == 32 + 62
    mgr.check_invariants()


def test_chunked_prefill_publishes_each_chunk_when_it_is_scheduled():
    mgr = new_manager(32, 4, enable_prefix_caching=True)
    prompt = list(range(40))
    mgr.allocate("a", 16, token_ids=prompt)
    mgr.free("a")  # 4 blocks cached
    tokens = list(prompt)
    cached = mgr.cached_prefix_tokens(40, token_ids=tokens)
    assert cached == 16 and mgr.stats()["prefix_query_blocks"] == 4  # a query counts nothing
    assert mgr.allocate("b", cached + 8, token_ids=tokens) == 16  # first chunk: 8 new tokens
    assert mgr.cached_prefix_tokens(40, token_ids=prompt) == 24  # published with its chunk...
    mgr.append_slots("b", 8)  # ...and the next chunk when it is scheduled
    assert mgr.cached_prefix_tokens(40, token_ids=prompt) == 32
    mgr.check_invariants()


def test_publish_on_write_keeps_uncomputed_chunks_out_of_the_cache():
    mgr = new_manager(32, 4, enable_prefix_caching=True, publish_on_write=True)
    prompt = list(range(17))
    tokens = list(prompt)  # the sequence's growing token list
    mgr.allocate("a", 17, token_ids=tokens)  # the whole prompt, computed in chunks
    assert mgr.cached_prefix_tokens(17, token_ids=prompt) == 0
    mgr.slot_mapping("a", 0, 8)  # chunk 1 is written in the step now running
    assert mgr.cached_prefix_tokens(17, token_ids=prompt) == 8
    mgr.slot_mapping("a", 8, 17)
    assert mgr.cached_prefix_tokens(17, token_ids=prompt) == 16
    follow = prompt + [100, 101, 102, 103, 5]
    for step in range(3):  # decode fills block 4 (slots 16..19) at the third token...
        tokens.append(100 + step)
        mgr.append_slots("a")
    assert mgr.cached_prefix_tokens(22, token_ids=follow) == 16
    tokens.append(103)
    mgr.append_slots("a")  # ...and it is published at the next append, once written
    assert mgr.cached_prefix_tokens(22, token_ids=follow) == 20
    mgr.check_invariants()
