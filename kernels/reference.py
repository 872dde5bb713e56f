"""Plain torch references for the paged-attention kernels.

These are the ground truth the Triton kernels are tested against, and the attention the engine
runs on the CPU. They favour clarity over speed: one sequence at a time, computed in float32.

Cache layout (one layer):
    k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]
    kv_scales:        optional (k_scale, v_scale), each [num_blocks, block_size, num_kv_heads],
                      for INT8 / FP8 caches: the stored value times its scale is the real value.
A sequence's token at logical slot i lives in block block_table[i // block_size], offset
i % block_size.
"""

from __future__ import annotations

import torch


def gather_kv(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_len: int,
    kv_scales: tuple[torch.Tensor, torch.Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `seq_len` slots of one sequence as contiguous [seq_len, Hkv, D] K and V in dtype."""
    block_size = k_cache.shape[1]
    num_blocks = -(-seq_len // block_size)
    ids = block_table[:num_blocks].long()
    k = k_cache[ids].flatten(0, 1)[:seq_len].float()  # [L, Hkv, D]
    v = v_cache[ids].flatten(0, 1)[:seq_len].float()
    if kv_scales is not None:
        k_scale, v_scale = kv_scales
        k = k * k_scale[ids].flatten(0, 1)[:seq_len, :, None].float()
        v = v * v_scale[ids].flatten(0, 1)[:seq_len, :, None].float()
    return k.to(dtype), v.to(dtype)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
            mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """q [N, Hq, D], k/v [L, Hkv, D] (float32), mask [N, L] bool (True = may attend).

    Returns out [N, Hq, D] and probs [N, Hq, L]. Query heads are grouped: head h reads kv head
    h // (Hq // Hkv), as in grouped-query attention.
    """
    num_heads, num_kv_heads = q.shape[1], k.shape[1]
    group = num_heads // num_kv_heads
    k = k.repeat_interleave(group, dim=1)  # [L, Hq, D]
    v = v.repeat_interleave(group, dim=1)
    logits = torch.einsum("nhd,lhd->nhl", q.float(), k) * scale
    if mask is not None:
        logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    probs = torch.nan_to_num(probs)  # a fully masked row attends to nothing
    return torch.einsum("nhl,lhd->nhd", probs, v), probs


def paged_decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    kv_scales: tuple[torch.Tensor, torch.Tensor] | None = None,
    score_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One new query token per sequence against its whole paged context.

    q [B, Hq, D]; block_tables [B, max_blocks] int; seq_lens [B] int (slots to read, >= 0).
    score_out, if given, is [B, Hkv, max_slots] float32 and receives, added in place, the
    attention probability each cached slot got, summed over the query heads of its group.
    Returns [B, Hq, D] in q's dtype.
    """
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.zeros(batch, num_heads, head_dim, dtype=torch.float32, device=q.device)
    for b in range(batch):
        seq_len = int(seq_lens[b])
        if seq_len == 0:
            continue
        k, v = gather_kv(k_cache, v_cache, block_tables[b], seq_len, kv_scales)
        o, probs = _attend(q[b : b + 1], k, v, scale, None)
        out[b] = o[0]
        if score_out is not None:
            score_out[b, :, :seq_len] += probs[0].view(num_kv_heads, group, seq_len).sum(1)
    return out.to(q.dtype)


def paged_prefill_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    kv_scales: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Causal attention for chunks of new tokens whose K/V are already written to the cache.

    q [T, Hq, D] packed over sequences; cu_seqlens_q [B + 1] are the offsets of each sequence's
    queries in q; seq_lens [B] counts each sequence's slots including its new tokens, so the
    n new tokens of sequence b sit at slots seq_lens[b] - n ... seq_lens[b] - 1 (a cached prefix
    or earlier chunks fill the slots before them). Returns [T, Hq, D] in q's dtype.
    """
    return _paged_prefill(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, kv_scales, torch.float32,
                          lambda b, q_, k, v, mask: _attend(q_, k, v, scale, mask)[0])


def paged_prefill_attention_sdpa(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    kv_scales: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """paged_prefill_attention_ref's contract the fast torch way: gather each sequence's pages in
    q's dtype, then one SDPA call. The gather-then-SDPA peer on a GPU."""
    def sdpa(b, q_, k, v, mask):  # q_ [n, Hq, D], k/v [L, Hkv, D], mask [n, L] -> [n, Hq, D]
        o = torch.nn.functional.scaled_dot_product_attention(
            q_.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
            attn_mask=mask, scale=scale, enable_gqa=True)
        return o[0].transpose(0, 1)

    return _paged_prefill(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, kv_scales, q.dtype, sdpa)


def _paged_prefill(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, kv_scales, dtype, attend):
    """Per sequence b with new tokens: gather its K/V in dtype, attend(b, q, k, v, causal mask)."""
    out = torch.zeros(q.shape, dtype=dtype, device=q.device)
    cu, lens = cu_seqlens_q.tolist(), seq_lens.tolist()
    for b, seq_len in enumerate(lens):
        start, end = cu[b], cu[b + 1]
        if end == start:
            continue
        k, v = gather_kv(k_cache, v_cache, block_tables[b], seq_len, kv_scales, dtype=dtype)
        query_slot = torch.arange(seq_len - (end - start), seq_len, device=q.device)
        mask = torch.arange(seq_len, device=q.device)[None, :] <= query_slot[:, None]  # [n, L]
        out[start:end] = attend(b, q[start:end].to(dtype), k, v, mask)
    return out.to(q.dtype)


def write_kv_ref(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    kv_scales: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Scatter new K/V [T, Hkv, D] to flat slots (block_id * block_size + offset); -1 = skip.

    With kv_scales (k_scale, v_scale) [num_blocks, block_size, Hkv] the rows are quantized to the
    cache's dtype with quantize_ref and their scales stored beside them.
    """
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    for new, cache, scales in zip((k, v), (k_cache, v_cache), kv_scales or (None, None)):
        rows = new[keep]
        if scales is not None:
            rows, scale = quantize_ref(rows, cache.dtype)
            scales.view(-1, *scales.shape[2:])[slots] = scale
        cache.view(-1, *cache.shape[2:])[slots] = rows.to(cache.dtype)


def block_rows(cache: torch.Tensor, block_dim: int = 0) -> torch.Tensor:
    """A view [outer, num_blocks, ...] of a cache whose block index is dimension block_dim.

    K/V [num_blocks, page, Hkv, D], their scales [num_blocks, page, Hkv], and a stack of layers
    [num_layers, num_blocks, ...] (block_dim=1) all qualify.
    """
    outer = cache.shape[:block_dim].numel()
    return cache.view(outer, *cache.shape[block_dim:])


def slot_rows(cache: torch.Tensor, block_dim: int = 0) -> torch.Tensor:
    """A view [outer, num_blocks * page, ...]: row b * page + i is slot i of block b."""
    rows = block_rows(cache, block_dim)
    return rows.view(rows.shape[0], rows.shape[1] * rows.shape[2], *rows.shape[3:])


def copy_rows_ref(src_rows: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                  dst_rows: torch.Tensor | None = None) -> None:
    """dst_rows[:, dst[i]] = src_rows[:, src[i]] for views [outer, rows, ...] from block_rows/slot_rows.

    All rows are read before any is written. dst_rows defaults to src_rows (a copy inside one
    cache); it may live on another device (swap to and from a host pool).
    """
    dst_rows = src_rows if dst_rows is None else dst_rows
    moved = src_rows.index_select(1, src.to(src_rows.device).long())
    dst_rows.index_copy_(1, dst.to(dst_rows.device).long(), moved.to(dst_rows.device))


# Quantized KV: one scale per (token, kv head), stored as float16 beside the cache.
# Symmetric INT8: scale = amax / 127, q = clamp(round(x / scale), -127, 127).
# FP8 e4m3:       scale = amax / 448, q = (x / scale) cast to float8_e4m3fn.
# The division uses the scale after its float16 rounding, so dequantization (q * scale) is the
# exact inverse up to the rounding of q. An all-zero row gets scale 1.
QUANT_MAX = {torch.int8: 127.0}
if hasattr(torch, "float8_e4m3fn"):
    QUANT_MAX[torch.float8_e4m3fn] = 448.0


def quantize_ref(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] -> (q [..., D] in dtype, scale [...] float16), one scale per row of D."""
    qmax = QUANT_MAX[dtype]
    amax = x.float().abs().amax(dim=-1)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax)).to(torch.float16)
    y = x.float() / scale.float()[..., None]
    if dtype == torch.int8:
        q = y.round().clamp(-qmax, qmax).to(torch.int8)
    else:
        q = y.clamp(-qmax, qmax).to(dtype)
    return q, scale


def dequantize_ref(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(q [..., D], scale [...]) -> float32 [..., D]."""
    return q.float() * scale.float()[..., None]
