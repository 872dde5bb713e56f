"""The oracle: kvsim and transformers load the same SmolLM2 GGUF and agree on every logit."""

from __future__ import annotations

import pytest
import torch

from engine import hub
from engine.generate import generate

DECODE_STEPS = 32
TOL = 1e-3


@pytest.fixture(scope="module")
def hf_model(smollm2):
    transformers = pytest.importorskip("transformers")
    path = hub.cached_path("smollm2-135m")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              dtype=torch.float32)
    return model.eval()


def hf_step_logits(hf_model, prompt: list[int], new_tokens: list[int]) -> torch.Tensor:
    """transformers' logits [steps, V] for the prompt then each forced new token (its own KV cache)."""
    with torch.no_grad():
        out = hf_model(torch.tensor([prompt]), use_cache=True)
        logits, cache = [out.logits[0, -1]], out.past_key_values
        for tok in new_tokens[:-1]:
            out = hf_model(torch.tensor([[tok]]), past_key_values=cache, use_cache=True)
            logits.append(out.logits[0, -1])
            cache = out.past_key_values
    return torch.stack(logits)


def test_batch_of_four_matches_transformers(smollm2, hf_model, shakespeare_ids):
    prompts = [shakespeare_ids[:640], shakespeare_ids[700:703], shakespeare_ids[1000:1077],
               smollm2.tokenizer.encode("The capital of France is")]
    assert len(prompts[0]) > 600 and len({len(p) for p in prompts}) == 4
    result = generate(smollm2, prompts, DECODE_STEPS, block_size=16, block_order_seed=7,
                      stop_at_eos=False, record_logits=True)
    ours = torch.stack(result.logits)  # [steps, B, V]
    assert ours.shape[0] == DECODE_STEPS
    worst = 0.0
    for b, prompt in enumerate(prompts):
        ref = hf_step_logits(hf_model, prompt, result.tokens[b])
        diff = (ours[:, b] - ref).abs().max().item()
        worst = max(worst, diff)
        assert diff <= TOL, f"sequence {b}: max |logit diff| {diff:.2e} > {TOL}"
        assert ref.argmax(-1).tolist() == result.tokens[b], f"sequence {b}: greedy tokens differ"
    print(f"max |logit difference| over 4 sequences x {DECODE_STEPS} steps: {worst:.2e}")


def test_tokenizer_matches_transformers(smollm2):
    transformers = pytest.importorskip("transformers")
    path = hub.cached_path("smollm2-135m")
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for text in ["The capital of France is", "Year 2024: 12345 apples,  two\nlines\t tabs!",
                 "naïve café — “quotes” <|im_start|>user"]:
        assert smollm2.tokenizer.encode(text) == hf_tok(text, add_special_tokens=False)["input_ids"], text
        assert smollm2.tokenizer.decode(smollm2.tokenizer.encode(text)) .replace("<|im_start|>", "") == \
            text.replace("<|im_start|>", "")
