"""Loaders: an HF directory and GGUF files of every supported type match transformers' logits."""

from __future__ import annotations

import pytest
import torch

from engine.generate import generate
from engine.loader import load_model
from tests.engine.helpers import hf_logits, tiny_hf_model, write_tiny_gguf

pytest.importorskip("transformers")


def paged_logits(loaded, prompt: list[int], steps: int) -> tuple[torch.Tensor, list[int]]:
    """kvsim's logits [steps, V] for prefill + greedy decode, and the tokens it chose."""
    result = generate(loaded, [prompt], steps, block_size=8, block_order_seed=3, stop_at_eos=False,
                      record_logits=True)
    return torch.stack(result.logits)[:, 0], result.tokens[0]


@pytest.mark.parametrize("tied", [False, True])
def test_hf_directory_matches_transformers(tmp_path, tied):
    """llama3 rope scaling, GQA 2:1, tied or untied output; 37 prompt tokens + 12 decode steps."""
    hf = tiny_hf_model(seed=1, tie_word_embeddings=tied)
    hf.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.config.rope_scaling is not None and loaded.config.tie_word_embeddings == tied
    prompt = torch.randint(0, 256, (37,), generator=torch.Generator().manual_seed(0)).tolist()
    ours, tokens = paged_logits(loaded, prompt, 12)
    ref = hf_logits(hf, prompt + tokens[:-1])[len(prompt) - 1:]
    assert (ours - ref).abs().max().item() <= 1e-4
    assert ref.argmax(-1).tolist() == tokens


def test_sharded_hf_directory(tmp_path):
    hf = tiny_hf_model(seed=2)
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    loaded = load_model(str(tmp_path))
    prompt = list(range(5, 30))
    ours, tokens = paged_logits(loaded, prompt, 4)
    ref = hf_logits(hf, prompt + tokens[:-1])[len(prompt) - 1:]
    assert (ours - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_gguf_types_match_transformers_on_dequantized_weights(tmp_path, qtype):
    hf = tiny_hf_model(seed=3, rope_scaling=None, rope_theta=10000.0)
    path = tmp_path / f"tiny-{qtype}.gguf"
    oracle = write_tiny_gguf(path, hf, qtype)
    hf.load_state_dict(oracle)  # transformers now holds exactly what the file holds
    loaded = load_model(str(path))
    assert loaded.config.num_kv_heads == 2 and not loaded.config.tie_word_embeddings
    prompt = list(range(40, 71))
    ours, tokens = paged_logits(loaded, prompt, 6)
    ref = hf_logits(hf, prompt + tokens[:-1])[len(prompt) - 1:]
    assert (ours - ref).abs().max().item() <= 1e-4
    assert ref.argmax(-1).tolist() == tokens


def test_named_shapes_random_weights_are_seeded():
    a = load_model("smollm2-135m", random_weights=True, seed=5)
    b = load_model("smollm2-135m", random_weights=True, seed=5)
    c = load_model("smollm2-135m", random_weights=True, seed=6)
    wa, wb, wc = (m.model.layers[3].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.tokenizer is None and a.source == "random weights (seed 5)"
