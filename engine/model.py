"""A Llama-family decoder in plain torch whose attention reads and writes K/V only through a
paged KV cache.

The forward pass takes the tokens of a whole step packed into one sequence of T tokens (any
mix of prefill chunks and decode tokens of different sequences) and an `AttentionMetadata`
that says where each token's K/V go (slot_mapping) and what each sequence attends to (block
tables, lengths). This is the vLLM / nano-vllm layout: no padding, no per-sequence tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from kernels import fused
from engine.config import ModelConfig
from engine.rope import RotaryEmbedding


@dataclass
class AttentionMetadata:
    """Where a step's tokens go and what they read. B sequences, T packed tokens.

    positions [T]      original token positions (RoPE)
    slot_mapping [T]   flat cache slot for each token's K/V (block_id * block_size + offset)
    block_tables [B, max_blocks], seq_lens [B]  slots each sequence reads after this step's writes
    cu_seqlens_q [B+1] offsets of each sequence's tokens in the packed batch
    is_decode          every sequence has exactly one new token (the decode kernel runs)
    score_out          optional [B, Hkv, max_slots] float32 per layer list: attention each slot got
    score_windows      optional [B]: in a prefill, count only each sequence's last n queries (0 = all)
    """

    positions: torch.Tensor
    slot_mapping: torch.Tensor
    block_tables: torch.Tensor
    seq_lens: torch.Tensor
    cu_seqlens_q: torch.Tensor
    is_decode: bool
    score_out: list[torch.Tensor] | None = None
    score_windows: torch.Tensor | None = None
    max_query_len: int | None = None  # host int: the most new tokens of any sequence (trims the prefill grid)
    query_tiles: torch.Tensor | None = None  # [2, N] int32 prefill kernel tile map (a graph's fixed grid)
    decode_seq_lens: torch.Tensor | None = None  # [D] int32: in a step with prefill chunks, the first D
    # sequences' lengths where they feed one token (they run in the decode kernel), else 0
    chunk_seq_lens: torch.Tensor | None = None  # [B] int32: with scores and decode_seq_lens, seq_lens with
    # the decode kernel's rows at 0 (the prefill score kernel leaves them to the decode kernel's score pass)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """Hugging Face's LlamaRMSNorm of x; with a residual, of h = x + residual, -> (normed, h)."""
        return fused.rms_norm(x, self.weight, self.eps, residual)


def fused_weight(linears: list[nn.Linear]) -> torch.Tensor:
    """One [sum of out_features, in_features] weight for layers that read the same input, so they
    run as one GEMM. After `fuse_linears` it is a view of their shared storage (no copy); if a
    later `.to()` split them again, a concatenation (correct, only slower)."""
    ws = [m.weight for m in linears]
    first, rows = ws[0], sum(w.shape[0] for w in ws)
    offset, adjacent = first.storage_offset(), True
    for w in ws:
        adjacent &= (w.is_contiguous() and w.storage_offset() == offset
                     and w.untyped_storage().data_ptr() == first.untyped_storage().data_ptr())
        offset += w.numel()
    if adjacent:
        return first.as_strided((rows, first.shape[1]), (first.shape[1], 1), first.storage_offset())
    return torch.cat(ws)


@torch.no_grad()
def fuse_linears(linears: list[nn.Linear]) -> None:
    """Give the layers' weights one storage, in order (their values and parameter names stay)."""
    fused = torch.cat([m.weight for m in linears])
    for m, part in zip(linears, fused.split([m.weight.shape[0] for m in linears])):
        m.weight = nn.Parameter(part, requires_grad=False)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        c = config
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        self.scale = c.head_dim ** -0.5
        self.q_proj = nn.Linear(c.hidden_size, c.num_heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.num_heads * c.head_dim, c.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, meta: AttentionMetadata, rope: RotaryEmbedding, kv_store) -> torch.Tensor:
        t, hq, hkv, d = x.shape[0], self.num_heads, self.num_kv_heads, self.head_dim
        qkv = F.linear(x, fused_weight([self.q_proj, self.k_proj, self.v_proj]))  # [T, (Hq + 2 Hkv) * D]
        q, k, v = (y.view(t, -1, d) for y in qkv.split([hq * d, hkv * d, hkv * d], dim=-1))
        fused.rotary_(q, k, rope.cos, rope.sin, meta.positions)  # q [T, Hq, D], k [T, Hkv, D] in place
        # Keys are stored after RoPE at their original positions: slot order never matters.
        kv_store.write(self.layer_idx, k, v, meta.slot_mapping)
        k_cache, v_cache, kv_scales = kv_store.layer(self.layer_idx)
        if meta.is_decode:
            score = meta.score_out[self.layer_idx] if meta.score_out is not None else None
            o = kernels.paged_decode_attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens,
                                               self.scale, kv_scales=kv_scales, score_out=score)
        else:
            o = kernels.paged_prefill_attention(q, k_cache, v_cache, meta.block_tables, meta.cu_seqlens_q,
                                                meta.seq_lens, self.scale, kv_scales=kv_scales,
                                                max_query_len=meta.max_query_len, query_tiles=meta.query_tiles)
            score = meta.score_out[self.layer_idx] if meta.score_out is not None else None
            if meta.decode_seq_lens is not None:  # the one-token sequences, packed first: split-K decode
                d = len(meta.decode_seq_lens)
                od = kernels.paged_decode_attention(q[:d], k_cache, v_cache, meta.block_tables[:d],
                                                    meta.decode_seq_lens, self.scale, kv_scales=kv_scales,
                                                    score_out=None if score is None else score[:d])
                o[:d] = torch.where((meta.decode_seq_lens > 0)[:, None, None], od, o[:d])
            if score is not None:
                lens = meta.seq_lens if meta.chunk_seq_lens is None else meta.chunk_seq_lens
                kernels.paged_prefill_scores(q, k_cache, v_cache, meta.block_tables, meta.cu_seqlens_q, lens,
                                             self.scale, score, meta.score_windows, kv_scales,
                                             max_query_len=meta.max_query_len, query_tiles=meta.query_tiles)
        return self.o_proj(o.reshape(t, -1).to(x.dtype))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(fused.silu_mul(F.linear(x, fused_weight([self.gate_proj, self.up_proj]))))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, residual, meta, rope, kv_store):
        """-> (this layer's MLP output, the residual stream before it); the next norm adds them
        (one fused kernel instead of an add and a norm)."""
        if residual is None:
            residual, normed = x, self.input_layernorm(x)
        else:
            normed, residual = self.input_layernorm(x, residual)
        attn = self.self_attn(normed, meta, rope, kv_store)
        normed, residual = self.post_attention_layernorm(attn, residual)
        return self.mlp(normed), residual


class LlamaModel(nn.Module):
    """Parameter names follow Hugging Face's LlamaForCausalLM (without the `model.` prefix)."""

    def __init__(self, config: ModelConfig, max_positions: int | None = None):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.max_positions = max_positions or config.max_position_embeddings
        self._rope: RotaryEmbedding | None = None
        self.fuse()

    def fuse(self) -> None:
        """Q/K/V and gate/up weights in one storage each (one GEMM each per layer). Call again after
        anything that gives parameters new storage (`to_empty`, `.to()`)."""
        for layer in self.layers:
            a, m = layer.self_attn, layer.mlp
            fuse_linears([a.q_proj, a.k_proj, a.v_proj])
            fuse_linears([m.gate_proj, m.up_proj])

    def rope(self) -> RotaryEmbedding:
        device = self.embed_tokens.weight.device
        if self._rope is None or self._rope.cos.device != device:
            self._rope = RotaryEmbedding(self.config, self.max_positions, device)
        return self._rope

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, meta: AttentionMetadata, kv_store,
                logits_indices: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [T] -> logits [len(logits_indices) or T, vocab] in float32."""
        rope = self.rope()
        x, residual = self.embed_tokens(input_ids), None  # [T, hidden]
        for layer in self.layers:
            x, residual = layer(x, residual, meta, rope, kv_store)
        if logits_indices is not None:
            x, residual = x[logits_indices], residual[logits_indices]
        return self.lm_head(self.norm(x, residual)[0]).float()
