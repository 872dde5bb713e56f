"""Load a Llama-family GGUF file: config, dequantized weights, tokenizer.

llama.cpp's converter permutes the rows of the Q and K projections so that each head's rotary
pairs are interleaved (its RoPE rotates (x0, x1), (x2, x3), ...). Our RoPE is Hugging Face's
"rotate half" ((x_i, x_{i+D/2}) pairs), so those rows are permuted back on load.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from engine.config import ModelConfig
from engine.errors import ModelLoadError
from engine.tokenizer import Tokenizer

SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")

_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head"}
_IGNORED = {"rope_freqs"}  # Llama 3.1 GGUFs carry rope factors; we take scaling from the config


def unpermute_rope_rows(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's per-head row permutation of a Q or K projection weight [H*D, hidden]."""
    rows = w.shape[0]
    return w.reshape(num_heads, rows // num_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _fields(reader, where: str) -> dict:
    out = {}
    for key, field in reader.fields.items():
        try:
            out[key] = field.contents()
        except Exception as e:  # a malformed metadata value
            raise ModelLoadError(f"{where}: cannot read metadata field {key!r} ({e})") from None
    return out


def read_gguf(path: Path, name: str | None = None):
    """-> (ModelConfig, {hf parameter name: float32 tensor}, Tokenizer)."""
    import gguf

    where = str(path)
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # gguf raises ValueError/struct.error/... for a corrupt header
        raise ModelLoadError(f"{where}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    fields = _fields(reader, where)
    arch = fields.get("general.architecture")
    if arch != "llama":
        raise ModelLoadError(f"{where}: architecture {arch!r} is not supported (supported: 'llama')")

    def meta(key, default=None):
        value = fields.get(f"llama.{key}", default)
        if value is None:
            raise ModelLoadError(f"{where}: GGUF metadata has no field 'llama.{key}'")
        return value

    num_heads = int(meta("attention.head_count"))
    hidden = int(meta("embedding_length"))
    tensor_names = {t.name for t in reader.tensors}
    vocab = len(fields.get("tokenizer.ggml.tokens") or []) or int(meta("vocab_size"))
    config = ModelConfig(
        name=name or path.stem, hidden_size=hidden, intermediate_size=int(meta("feed_forward_length")),
        num_layers=int(meta("block_count")), num_heads=num_heads,
        num_kv_heads=int(meta("attention.head_count_kv", num_heads)), vocab_size=vocab,
        head_dim=int(meta("rope.dimension_count", hidden // num_heads)),
        rope_theta=float(meta("rope.freq_base", 10000.0)),
        rms_norm_eps=float(meta("attention.layer_norm_rms_epsilon")),
        tie_word_embeddings="output.weight" not in tensor_names,
        max_position_embeddings=int(meta("context_length", 4096)),
        bos_token_id=fields.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=fields.get("tokenizer.ggml.eos_token_id"),
    )
    weights = {}
    for t in reader.tensors:
        base, _, suffix = t.name.rpartition(".")
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
        if base in _IGNORED:
            continue
        if m and m.group(2) in _LAYER_NAMES:
            hf_name = f"layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{suffix}"
        elif base in _TOP_NAMES:
            hf_name = f"{_TOP_NAMES[base]}.{suffix}"
        else:
            raise ModelLoadError(f"{where}: unexpected tensor {t.name!r} for a llama model")
        qtype = t.tensor_type.name
        if qtype not in SUPPORTED_TYPES:
            raise ModelLoadError(f"{where}: tensor {t.name!r} is {qtype}, a GGUF type kvsim does not "
                                 f"dequantize (supported: {', '.join(SUPPORTED_TYPES)})")
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dimensions fastest-first
        # np.array copies: F32 tensors come back as read-only views of the memory-mapped file
        w = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
        w = w.reshape(shape)
        if m and m.group(2) == "attn_q":
            w = unpermute_rope_rows(w, config.num_heads)
        elif m and m.group(2) == "attn_k":
            w = unpermute_rope_rows(w, config.num_kv_heads)
        weights[hf_name] = w
    tokenizer = Tokenizer.from_gguf_fields(fields, where)
    return config, weights, tokenizer
