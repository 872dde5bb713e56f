"""Prefix cache: full blocks found again by the hash chain of their content.

A full block's key is a flat tuple `(parent_hash, extra_key, *content)` and its hash is
`hash(key)`; the next block's parent_hash is that hash, so a block matches only if every block
before it matched too. `content` is either
    tokens:  the block's token ids (block_size of them), or
    ids:     "ids", token offset into the first trace id, the trace ids spanned: when a trace
             gives prefix block ids instead of tokens (Mooncake's `hash_ids`, 512 tokens an id).
             With a 16-token engine block, trace id h stands for 32 engine blocks keyed
             ("ids", 0, h), ("ids", 16, h), ... ("ids", 496, h); an engine block larger than a
             trace block spans several ids.
Keys are flat tuples of ints and strings, which the garbage collector stops tracking: a cache of
millions of blocks costs no collector time.
The map goes hash -> block id, and a lookup compares the stored key with the asked one, so a
hit returns a block only when its tokens (or ids) and the whole chain's hash agree; a hash
collision is a miss, never a wrong block. extra_key separates caches that must not mix (a LoRA
adapter, a multimodal input, a KV dtype). Only full blocks are keyed.

This class only indexes blocks; the allocator decides when a cached block is reclaimed, and
calls `forget` then. Plain Python, O(1) per block.
"""

from __future__ import annotations

from collections.abc import Sequence

BlockKey = tuple  # (parent_hash | None, extra_key, *content)


class PrefixCache:
    """hash -> block index of the full blocks whose content is known."""

    def __init__(self, num_blocks: int, block_size: int, prefix_id_block_size: int = 512):
        if block_size <= 0 or prefix_id_block_size <= 0:
            raise ValueError(f"block sizes must be > 0, got block_size={block_size}, "
                             f"prefix_id_block_size={prefix_id_block_size}")
        self.block_size = block_size
        self.prefix_id_block_size = prefix_id_block_size
        self._block_of_hash: dict[int, int] = {}
        self.hash_of_block: list[int | None] = [None] * num_blocks  # read-only outside
        self._key_of_block: list[BlockKey | None] = [None] * num_blocks

    def __len__(self) -> int:
        return len(self._block_of_hash)

    def __contains__(self, block_id: int) -> bool:
        return self.hash_of_block[block_id] is not None

    # ---- keys ---------------------------------------------------------------------------------
    def token_keys(self, token_ids: Sequence[int], first_block: int, num_blocks: int,
                   parent_hash: int | None, extra_key: object = None) -> list[tuple[int, BlockKey]]:
        """(hash, key) of full blocks first_block ... first_block + num_blocks - 1 of a token list."""
        size, out = self.block_size, []
        for j in range(first_block, first_block + num_blocks):
            key = (parent_hash, extra_key, *token_ids[j * size:(j + 1) * size])
            parent_hash = hash(key)
            out.append((parent_hash, key))
        return out

    def id_keys(self, prefix_ids: Sequence[int], num_blocks: int,
                extra_key: object = None) -> list[tuple[int, BlockKey]]:
        """(hash, key) of the first num_blocks full engine blocks of a prefix-id list."""
        size, id_size, parent_hash, out = self.block_size, self.prefix_id_block_size, None, []
        for j in range(num_blocks):
            start = j * size
            first, last = start // id_size, (start + size - 1) // id_size
            key = (parent_hash, extra_key, "ids", start - first * id_size, *prefix_ids[first:last + 1])
            parent_hash = hash(key)
            out.append((parent_hash, key))
        return out

    def num_id_blocks(self, num_tokens: int, num_prefix_ids: int) -> int:
        """Full engine blocks of a prompt whose tokens are all covered by its prefix ids."""
        return min(num_tokens, num_prefix_ids * self.prefix_id_block_size) // self.block_size

    # ---- index --------------------------------------------------------------------------------
    def lookup(self, block_hash: int, key: BlockKey) -> int | None:
        """The block holding exactly this key, or None."""
        block_id = self._block_of_hash.get(block_hash)
        if block_id is None or self._key_of_block[block_id] != key:
            return None
        return block_id

    def match(self, keys: list[tuple[int, BlockKey]]) -> list[int]:
        """Blocks of the longest cached prefix of keys."""
        hits, get, key_of = [], self._block_of_hash.get, self._key_of_block
        for block_hash, key in keys:
            block_id = get(block_hash)
            if block_id is None or key_of[block_id] != key:
                break
            hits.append(block_id)
        return hits

    def register(self, block_id: int, block_hash: int, key: BlockKey) -> bool:
        """Index a full block; False (and nothing changes) if the hash is taken or the block is
        already indexed."""
        if block_hash in self._block_of_hash or self.hash_of_block[block_id] is not None:
            return False
        self._block_of_hash[block_hash] = block_id
        self.hash_of_block[block_id] = block_hash
        self._key_of_block[block_id] = key
        return True

    def register_all(self, blocks: list[int], keys: list[tuple[int, BlockKey]]) -> None:
        """register() for each (block, key) pair."""
        by_hash, hash_of, key_of = self._block_of_hash, self.hash_of_block, self._key_of_block
        for block_id, (block_hash, key) in zip(blocks, keys):
            if block_hash not in by_hash and hash_of[block_id] is None:
                by_hash[block_hash] = block_id
                hash_of[block_id] = block_hash
                key_of[block_id] = key

    def forget(self, block_id: int) -> bool:
        """Drop a block's entry (its content is about to change); False if it had none."""
        block_hash = self.hash_of_block[block_id]
        if block_hash is None:
            return False
        del self._block_of_hash[block_hash]
        self.hash_of_block[block_id] = self._key_of_block[block_id] = None
        return True

    def key_of(self, block_id: int) -> BlockKey | None:
        return self._key_of_block[block_id]

    def check(self) -> None:
        """Assert the maps agree (for tests)."""
        indexed = [b for b, h in enumerate(self.hash_of_block) if h is not None]
        assert len(indexed) == len(self._block_of_hash)
        for block_id in indexed:
            block_hash = self.hash_of_block[block_id]
            assert self._block_of_hash[block_hash] == block_id
            assert hash(self._key_of_block[block_id]) == block_hash
