"""kvcache: the paged KV cache.

Bookkeeping (plain Python, no torch): `KVCacheManager` (manager.py) over `BlockAllocator`,
`BlockTable`, `PrefixCache`, token eviction and swap bookkeeping; `sizing` and `dtypes`.
Tensor side (imported lazily, so the analytic path never loads torch): `PagedKVStore`
(kv_store.py), `HostSwapPool` (swap.py), `apply_copies` (copy_exec.py), `quant`.
"""

from kvcache.allocator import BlockAllocator
from kvcache.block_table import BlockTable
from kvcache.copy_ops import DEVICE, SWAP_IN, SWAP_OUT, KVCopy
from kvcache.dtypes import KV_DTYPES, KVDtype, UnknownKVDtypeError, get_kv_dtype
from kvcache.errors import (DoubleFreeError, KVCacheError, OutOfBlocksError, SequenceStateError,
                            SharedBlockWriteError, SwapSpaceError, UnknownSequenceError)
from kvcache.manager import KVCacheManager
from kvcache.prefix_cache import PrefixCache
from kvcache.sizing import KVShape, kv_bytes_per_block, kv_bytes_per_token, kv_cache_bytes, kv_report

_LAZY = {"PagedKVStore": "kvcache.kv_store", "HostSwapPool": "kvcache.swap",
         "apply_copies": "kvcache.copy_exec"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kvcache' has no attribute {name!r}")


__all__ = ["BlockAllocator", "BlockTable", "DEVICE", "SWAP_IN", "SWAP_OUT", "KVCopy", "KV_DTYPES",
           "KVDtype", "UnknownKVDtypeError", "get_kv_dtype", "DoubleFreeError", "KVCacheError",
           "OutOfBlocksError", "SequenceStateError", "SharedBlockWriteError", "SwapSpaceError",
           "UnknownSequenceError", "KVCacheManager", "PrefixCache", "KVShape", "kv_bytes_per_block",
           "kv_bytes_per_token", "kv_cache_bytes", "kv_report", *_LAZY]
