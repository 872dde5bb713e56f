"""Step duration from a step's composition: a roofline over the model shape and the GPU, or a
calibrated profile where one was measured (`engine.calibrated`).

Roofline: each part of a step is either bandwidth-bound or compute-bound, and takes the larger
of its two times: the linear layers (weights read once per step, 2 FLOPs per weight per token),
the LM head (only for the rows that produce a token), decode attention (every cached K/V byte
read once, scales included), prefill attention (causal FLOPs over the chunk and its context),
the cache writes, swap traffic over the host link, plus a fixed per-step and per-layer overhead.
A step that keeps attention scores (StepShape.scored) also moves its score bytes (score_time).
`cost_model_for` picks the calibrated model when a profile of (model, GPU, KV dtype) exists.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.config import ModelConfig
from engine.gpus import GPU


@dataclass(frozen=True)
class StepShape:
    """What a step costs depends on these aggregates only (so equal shapes cost the same).

    The roofline reads the sums; the calibrated model also reads the decode batch size and its
    longest context (decode attention is bound by the bytes of all sequences or by the longest
    one, whichever is slower) and each prefill chunk's (cached tokens, new tokens).
    """

    num_tokens: int  # tokens fed (prefill chunks + decode tokens)
    num_logits: int  # rows that produce a token
    decode_context_tokens: int = 0  # sum over decoding sequences of the tokens they read
    prefill_attn_pairs: int = 0  # sum over chunks of (query, key) pairs under the causal mask
    prefill_context_tokens: int = 0  # sum over chunks of the tokens they read
    swap_bytes: int = 0
    copy_bytes: int = 0
    num_decode_seqs: int = 0  # decoding sequences (one token each)
    decode_max_context: int = 0  # the most tokens one decoding sequence reads
    prefill_chunks: tuple[tuple[int, int], ...] = ()  # (cached tokens before it, new tokens) per chunk
    scored: bool = False  # attention scores kept for the eviction policy (H2O, TOVA, SnapKV): the decode
    # kernel adds each key's probability to a score buffer; a step with prefill scores its chunks with
    # kernels/prefill_scores.py, in its CUDA graph (until 2026-12-06 such a step ran eagerly and scored
    # with the torch reference: what the shipped profiles' scored_steps measured)


def causal_pairs(start: int, num_new: int) -> int:
    """(query, key) pairs when num_new queries at positions start.. attend causally."""
    return num_new * start + num_new * (num_new + 1) // 2


class CostModel:
    def __init__(self, model: ModelConfig, gpu: GPU, kv_bytes_per_token: float,
                 weight_bytes_per_param: float = 2.0):
        """kv_bytes_per_token: K + V of one token over all layers, scales included."""
        self.model, self.gpu = model, gpu
        self.source = f"{gpu.name} roofline (datasheet peaks x measured efficiencies)"
        self.bw = gpu.hbm_bytes_per_s * gpu.bandwidth_efficiency
        self.flops = gpu.matmul_flops_per_s * gpu.matmul_efficiency
        self.kv_bytes_per_token = kv_bytes_per_token
        embed = model.vocab_size * model.hidden_size
        self.linear_params = model.num_params - embed * (1 if model.tie_word_embeddings else 2)
        self.head_params = embed
        self.weight_bytes = weight_bytes_per_param
        self.attn_flops_per_pair = 4 * model.num_layers * model.num_heads * model.head_dim
        self.fixed_s = gpu.step_overhead_s + model.num_layers * gpu.layer_overhead_s

    def _roof(self, flops: float, bytes_: float) -> float:
        return max(flops / self.flops, bytes_ / self.bw)

    def step_time(self, s: StepShape) -> float:
        if s.num_tokens == 0:
            return 0.0
        t = self.fixed_s
        t += self._roof(2 * s.num_tokens * self.linear_params, self.linear_params * self.weight_bytes)
        t += self._roof(2 * s.num_logits * self.head_params, self.head_params * self.weight_bytes)
        t += self.decode_context_bytes(s.decode_context_tokens) / self.bw
        t += self._roof(s.prefill_attn_pairs * self.attn_flops_per_pair,
                        s.prefill_context_tokens * self.kv_bytes_per_token)
        t += s.num_tokens * self.kv_bytes_per_token / self.bw
        return t + self.transfer_time(s) + (self.score_time(s) if s.scored else 0.0)

    def score_time(self, s: StepShape) -> float:
        """What keeping attention scores adds, as bytes (kernels/decode_attention.py): for every key a
        decode row reads, the kernel stores an fp32 logit per query head and reads it back, and reads and
        writes an fp32 score per KV head; a chunk's queries get fp32 probabilities per query head,
        written and read back (an upper bound: kernels/prefill_scores.py keeps them in registers and reads
        the chunk's K twice instead), and that step's two more launches a layer."""
        m, per_layer = self.model, 2 * 4 * self.model.num_layers
        decode = per_layer * (m.num_heads + m.num_kv_heads) * s.decode_context_tokens
        prefill = per_layer * m.num_heads * s.prefill_attn_pairs
        # the score kernel's two launches a layer: about half a layer's launches and small ops
        launches = m.num_layers * self.gpu.layer_overhead_s / 2 if s.prefill_chunks else 0.0
        return (decode + prefill) / self.bw + launches

    def transfer_time(self, s: StepShape) -> float:
        """Block copies (read + write in HBM) and swap traffic over the host link."""
        return 2 * s.copy_bytes / self.bw + s.swap_bytes / self.gpu.host_link_bytes_per_s

    def decode_context_bytes(self, tokens: int) -> float:
        return tokens * self.kv_bytes_per_token


def cost_model_for(model: ModelConfig, gpu: GPU, kv_dtype: str, *, profile=None):
    """The calibrated cost model of (model, GPU, KV dtype) if a profile has its tables, else the
    roofline; `.source` says which (and why not calibrated). profile: a profile file to use
    instead of searching $KVSIM_PROFILES and the shipped ones (engine/profiles/)."""
    from engine.calibrated import calibrated_or_none  # it builds on this module
    from kvcache.sizing import kv_bytes_per_token

    roofline = CostModel(model, gpu, kv_bytes_per_token(model, kv_dtype))
    return calibrated_or_none(model, gpu, kv_dtype, roofline, profile) or roofline
