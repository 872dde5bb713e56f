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
from kernels.scores_ref import paged_prefill_scores_ref
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


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)  # as Hugging Face's LlamaRMSNorm


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
        t = x.shape[0]
        q = rope(self.q_proj(x).view(t, self.num_heads, self.head_dim), meta.positions)  # [T, Hq, D]
        k = rope(self.k_proj(x).view(t, self.num_kv_heads, self.head_dim), meta.positions)  # [T, Hkv, D]
        v = self.v_proj(x).view(t, self.num_kv_heads, self.head_dim)
        # Keys are stored after RoPE at their original positions: slot order never matters.
        kv_store.write(self.layer_idx, k, v, meta.slot_mapping)
        k_cache, v_cache, kv_scales = kv_store.layer(self.layer_idx)
        if meta.is_decode:
            score = meta.score_out[self.layer_idx] if meta.score_out is not None else None
            o = kernels.paged_decode_attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens,
                                               self.scale, kv_scales=kv_scales, score_out=score)
        else:
            o = kernels.paged_prefill_attention(q, k_cache, v_cache, meta.block_tables, meta.cu_seqlens_q,
                                                meta.seq_lens, self.scale, kv_scales=kv_scales)
            if meta.score_out is not None:
                paged_prefill_scores_ref(q, k_cache, v_cache, meta.block_tables, meta.cu_seqlens_q, meta.seq_lens,
                                         self.scale, meta.score_out[self.layer_idx], meta.score_windows, kv_scales)
        return self.o_proj(o.reshape(t, -1).to(x.dtype))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, meta, rope, kv_store):
        x = x + self.self_attn(self.input_layernorm(x), meta, rope, kv_store)
        return x + self.mlp(self.post_attention_layernorm(x))


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
        x = self.embed_tokens(input_ids)  # [T, hidden]
        for layer in self.layers:
            x = layer(x, meta, rope, kv_store)
        if logits_indices is not None:
            x = x[logits_indices]
        return self.lm_head(self.norm(x)).float()
