"""Apply the manager's copy log to the physical cache (the compute backend's step 4).

The log has in-order semantics (see copy_ops). To stay fast it runs in batches: consecutive
entries of one kind, cut wherever an entry reads or rewrites a slot an earlier entry of the
batch wrote (a batch reads all its sources before writing any destination).
"""

from __future__ import annotations

from kvcache.copy_ops import DEVICE, SWAP_IN, SWAP_OUT, KVCopy
from kvcache.kv_store import PagedKVStore
from kvcache.swap import HostSwapPool


def apply_copies(copies: list[KVCopy], store: PagedKVStore, swap_pool: HostSwapPool | None = None) -> None:
    """Run every copy of the log, in order, on the store (and the host pool for swaps)."""
    size = store.block_size
    kind, src, dst, written = None, [], [], set()

    def flush() -> None:
        if not src:
            return
        if kind == DEVICE:
            store.copy_slots(src, dst)
        else:
            if swap_pool is None:
                raise ValueError("the copy log swaps blocks but no HostSwapPool was given")
            if kind == SWAP_OUT:
                swap_pool.swap_out([(s // size, d // size) for s, d in zip(src, dst)])
            else:
                swap_pool.swap_in([(d // size, s // size) for s, d in zip(src, dst)])
        src.clear()
        dst.clear()
        written.clear()

    for copy in copies:
        src_range = range(copy.src_slot, copy.src_slot + copy.num_slots)
        dst_range = range(copy.dst_slot, copy.dst_slot + copy.num_slots)
        # a swap batch reads one memory and writes the other: no hazard inside it
        hazard = copy.kind == DEVICE and (any(s in written for s in src_range)
                                          or any(d in written for d in dst_range))
        if copy.kind != kind or hazard:
            flush()
            kind = copy.kind
        if kind == DEVICE:
            src.extend(src_range)
            dst.extend(dst_range)
            written.update(dst_range)
        else:  # whole blocks: their first slots
            if kind not in (SWAP_OUT, SWAP_IN) or copy.num_slots != size:
                raise ValueError(f"bad copy log entry {copy}")
            src.append(copy.src_slot)
            dst.append(copy.dst_slot)
    flush()
