"""Tiny Llama checkpoints written by the tests: an HF directory, and GGUF files of any type."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, rope_theta=500000.0, max_position_embeddings=2048,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64})


def tiny_hf_model(seed: int = 0, **overrides):
    import transformers

    torch.manual_seed(seed)  # transformers initialises from the global generator
    config = transformers.LlamaConfig(**{**TINY, "tie_word_embeddings": False, **overrides})
    return transformers.LlamaForCausalLM(config).eval()


def hf_logits(model, token_ids: list[int]) -> torch.Tensor:
    """Full-sequence logits [T, V] from transformers (no cache)."""
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0].float()


def permute_like_llama_cpp(w: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf row permutation of Q/K weights (interleaved rotary pairs)."""
    return w.reshape(num_heads, 2, w.shape[0] // num_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def write_tiny_gguf(path: Path, hf_model, qtype_name: str) -> dict[str, torch.Tensor]:
    """Write hf_model as a llama GGUF with every matrix in `qtype_name`.

    Returns the HF state dict as the file holds it after quantization (dequantized), so a
    transformers model loaded with it is the exact oracle for the file.
    """
    import gguf

    qtype = gguf.GGMLQuantizationType[qtype_name]
    cfg = hf_model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_tokenizer_model("gpt2")
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    writer.add_token_list(alphabet)
    writer.add_token_merges([])
    writer.add_token_types([1] * len(alphabet))
    oracle = {}
    for name, tensor in hf_model.state_dict().items():
        w = tensor.float().numpy()
        key = name.removeprefix("model.")
        if key.startswith("layers."):
            _, idx, rest = key.split(".", 2)
            module, _, suffix = rest.rpartition(".")
            gguf_name = f"blk.{idx}.{_GGUF_NAMES[module]}.{suffix}"
        else:
            gguf_name = {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
                         "lm_head.weight": "output.weight"}[key]
        heads = {"attn_q.weight": cfg.num_attention_heads, "attn_k.weight": cfg.num_key_value_heads}
        num_heads = next((h for k, h in heads.items() if gguf_name.endswith(k)), None)
        # stored row i holds original row order[i]
        order = np.arange(w.shape[0]) if num_heads is None else permute_like_llama_cpp(np.arange(w.shape[0]), num_heads)
        stored = w[order]
        if w.ndim == 2 and qtype_name != "F32":
            data = gguf.quants.quantize(stored, qtype)
            writer.add_tensor(gguf_name, data, raw_dtype=qtype)
            stored = gguf.quants.dequantize(data, qtype).reshape(w.shape)
        else:
            writer.add_tensor(gguf_name, stored.astype(np.float32))
        back = np.empty_like(stored, dtype=np.float32)
        back[order] = stored
        oracle[name] = torch.from_numpy(back)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return oracle
