"""Attention kernels over a paged KV cache, each beside its torch reference.

Until the Triton kernels land, the public functions are the torch references.
"""

from kernels.reference import (  # noqa: F401
    paged_decode_attention_ref as paged_decode_attention,
    paged_prefill_attention_ref as paged_prefill_attention,
    write_kv_ref as write_kv,
)
