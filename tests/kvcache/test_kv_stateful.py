"""Random interleavings of every manager action, with the bytes checked after every step.

The machine drives allocate (fresh prompts and prefix hits) / append / fork / free / evict
tokens / compact / swap-out / swap-in / bad calls on a small manager backed by a real store,
and after every step checks: free + used + cached == total, every refcount equals its holders,
no block is in two free lists (check_invariants), and every sequence's slots hold exactly its
own tokens at the positions slot_positions reports (so a prefix hit returned the request's
tokens, every copy-on-write and compaction copy ran, and a swap round trip restored the bytes).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from kvcache_shadow import ShadowCache, prefix_codes

from kvcache.errors import DoubleFreeError, OutOfBlocksError, SharedBlockWriteError

BLOCK_SIZE, NUM_BLOCKS, NUM_HOST_BLOCKS = 4, 28, 12
VOCAB = 3  # few token values: prompts collide often, so prefix hits are frequent


class KVCacheMachine(RuleBasedStateMachine):
    PUBLISH_ON_WRITE = False

    def __init__(self):
        super().__init__()
        self.cache = ShadowCache(NUM_BLOCKS, BLOCK_SIZE, NUM_HOST_BLOCKS, enable_prefix_caching=True,
                                 publish_on_write=self.PUBLISH_ON_WRITE)
        self.mgr = self.cache.mgr
        self.valid: dict[int, set[int]] = {}  # positions each sequence still holds
        self.snapshots: dict[int, list[torch.Tensor]] = {}  # device bytes at swap-out
        self.history: list[list[int]] = []  # prompts seen, to ask for them again
        self.next_id = 0
        self.num_hits = 0

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def _running(self) -> list[int]:
        return [s for s in self.valid if not self.mgr.is_swapped(s)]

    def _pick_running(self, data) -> int | None:
        running = self._running()
        return data.draw(st.sampled_from(running)) if running else None

    # ---- admission ----------------------------------------------------------------------------
    @rule(data=st.data(), reuse=st.booleans(), extra=st.sampled_from([None, None, "lora-a"]))
    def allocate(self, data, reuse, extra):
        if reuse and self.history:
            base = data.draw(st.sampled_from(self.history))
            keep = data.draw(st.integers(0, len(base)))
            tokens = base[:keep] + data.draw(st.lists(st.integers(0, VOCAB - 1), max_size=6))
        else:
            tokens = data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=22))
        if not tokens:
            return
        seq, n = self._new_id(), len(tokens)
        available = self.mgr.num_available_blocks
        if not self.mgr.can_allocate(n, token_ids=tokens, extra_key=extra):
            with pytest.raises(OutOfBlocksError):
                self.mgr.allocate(seq, n, token_ids=tokens, extra_key=extra)
            assert seq not in self.mgr and self.mgr.num_available_blocks == available
            return
        self.cache.tokens[seq] = tokens
        cached = self.mgr.allocate(seq, n, token_ids=tokens, extra_key=extra)
        assert cached % BLOCK_SIZE == 0 and cached <= n - 1
        self.num_hits += cached > 0
        self.valid[seq] = set(range(n))
        self.history.append(list(tokens))
        # the hit holds this request's tokens before we write anything
        self.cache.write(seq, [], [])
        codes = [c for c, _, _ in self.cache.read(seq)[:cached]]
        assert codes == prefix_codes(tokens)[:cached]
        self.cache.write(seq, self.mgr.slot_mapping(seq, cached, n), list(range(cached, n)))

    @precondition(lambda self: self.valid)
    @rule(data=st.data(), num_new=st.integers(1, 6))
    def append(self, data, num_new):
        seq = self._pick_running(data)
        if seq is None:
            return
        tokens = self.cache.tokens[seq]
        first = len(tokens)
        tokens.extend(data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=num_new, max_size=num_new)))
        if not self.mgr.can_append(seq, num_new):
            with pytest.raises(OutOfBlocksError):
                self.mgr.append_slots(seq, num_new)
            del tokens[first:]
            return
        slots = self.mgr.append_slots(seq, num_new)
        self.cache.write(seq, slots, list(range(first, first + num_new)))
        self.valid[seq].update(range(first, first + num_new))

    # ---- lifetime -----------------------------------------------------------------------------
    @precondition(lambda self: self.valid)
    @rule(data=st.data())
    def fork(self, data):
        parent = self._pick_running(data)
        if parent is None:
            return
        child = self._new_id()
        self.cache.tokens[child] = list(self.cache.tokens[parent])
        self.mgr.fork(parent, child, token_ids=self.cache.tokens[child])
        self.valid[child] = set(self.valid[parent])

    @precondition(lambda self: self.valid)
    @rule(data=st.data())
    def free(self, data):
        seq = data.draw(st.sampled_from(sorted(self.valid)))
        self.mgr.free(seq)
        del self.valid[seq], self.cache.tokens[seq]
        self.snapshots.pop(seq, None)
        with pytest.raises(DoubleFreeError):
            self.mgr.free(seq)

    # ---- token eviction -----------------------------------------------------------------------
    @precondition(lambda self: self.valid)
    @rule(data=st.data(), keep_holes=st.integers(0, 2))
    def evict(self, data, keep_holes):
        seq = self._pick_running(data)
        if seq is None:
            return
        held = [s for s, p in enumerate(self.mgr.slot_positions(seq)) if p >= 0]
        slots = data.draw(st.lists(st.sampled_from(held), unique=True, max_size=len(held))) if held else []
        before = self.mgr.slot_positions(seq)
        try:
            moves = self.mgr.evict_tokens(seq, slots, keep_holes=keep_holes)
        except OutOfBlocksError:
            assert self.mgr.slot_positions(seq) == before  # refused before any change
            return
        self.valid[seq] -= {before[s] for s in slots}
        assert self.mgr.num_holes(seq) <= keep_holes
        # moves carry each surviving token's slot: apply them to the old positions
        after = self.mgr.slot_positions(seq)
        moved = {dst: before[src] for src, dst in moves}
        assert all(after[d] == p for d, p in moved.items())
        assert len(moved) == len(moves)

    @precondition(lambda self: self.valid)
    @rule(data=st.data())
    def compact(self, data):
        seq = self._pick_running(data)
        if seq is None:
            return
        try:
            self.mgr.compact(seq)
        except OutOfBlocksError:
            return
        assert self.mgr.num_holes(seq) == 0

    # ---- swap ---------------------------------------------------------------------------------
    @precondition(lambda self: self.valid)
    @rule(data=st.data())
    def swap_out(self, data):
        seq = self._pick_running(data)
        if seq is None:
            return
        if not self.mgr.can_swap_out(seq):
            return
        self.cache.drain()
        blocks = torch.tensor(self.mgr.block_table(seq), dtype=torch.long)
        self.snapshots[seq] = [t[:, blocks].clone() for t in self.cache.store.slot_tensors()]
        pairs = self.mgr.swap_out(seq)
        assert [d for d, _ in pairs] == blocks.tolist()

    @precondition(lambda self: self.valid)
    @rule(data=st.data())
    def swap_in(self, data):
        swapped = [s for s in self.valid if self.mgr.is_swapped(s)]
        if not swapped:
            return
        seq = data.draw(st.sampled_from(swapped))
        if not self.mgr.can_swap_in(seq):
            return
        self.mgr.swap_in(seq)
        self.cache.drain()
        blocks = torch.tensor(self.mgr.block_table(seq), dtype=torch.long)
        for before, t in zip(self.snapshots.pop(seq), self.cache.store.slot_tensors()):
            assert torch.equal(before.view(torch.uint8), t[:, blocks].contiguous().view(torch.uint8))

    # ---- bad calls ----------------------------------------------------------------------------
    @precondition(lambda self: self.valid)
    @rule()
    def write_into_a_prefix_hit(self):
        for seq in self._running():
            table = self.mgr.block_table(seq)
            for index, block in enumerate(table):
                if not self.mgr.pool.is_own(block, seq):
                    start = index * BLOCK_SIZE
                    with pytest.raises(SharedBlockWriteError):
                        self.mgr.slot_mapping(seq, start, min(start + 1, self.mgr.num_slots(seq)))
                    return

    # ---- after every step ---------------------------------------------------------------------
    @invariant()
    def bookkeeping_and_bytes_agree(self):
        self.mgr.check_invariants()
        s = self.mgr.stats()
        assert s["blocks_free"] + s["blocks_used"] + s["blocks_cached"] == s["blocks_total"]
        for seq in self.valid:
            self.cache.verify(seq, self.valid[seq])


class PublishOnWriteMachine(KVCacheMachine):
    """The same, with blocks published to the prefix cache only once written."""

    PUBLISH_ON_WRITE = True


_SETTINGS = dict(stateful_step_count=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TestKVCacheMachine = KVCacheMachine.TestCase
TestKVCacheMachine.settings = settings(max_examples=100, **_SETTINGS)
TestPublishOnWriteMachine = PublishOnWriteMachine.TestCase
TestPublishOnWriteMachine.settings = settings(max_examples=40, **_SETTINGS)
