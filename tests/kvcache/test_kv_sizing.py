"""KV sizing arithmetic for MHA / GQA / MQA shapes and every dtype."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kvcache.sizing import (KVShape, attention_kind, kv_bytes_per_block, kv_bytes_per_token,
                            kv_cache_bytes, kv_report, num_blocks_for_memory)

LLAMA3_8B = KVShape(num_layers=32, num_kv_heads=8, head_dim=128, num_heads=32)  # GQA
LLAMA2_7B = KVShape(num_layers=32, num_kv_heads=32, head_dim=128, num_heads=32)  # MHA
MQA = KVShape(num_layers=24, num_kv_heads=1, head_dim=128, num_heads=16)


@pytest.mark.parametrize("shape, dtype, per_token", [
    (LLAMA3_8B, "fp16", 131_072),  # 2 * 32 * 8 * 128 * 2: the well-known 128 KiB a token
    (LLAMA3_8B, "fp32", 262_144),
    (LLAMA3_8B, "int8", 2 * 32 * 8 * (128 + 2)),  # + one fp16 scale per (token, head), K and V
    (LLAMA3_8B, "int8-asym", 2 * 32 * 8 * (128 + 4)),
    (LLAMA3_8B, "fp8", 2 * 32 * 8 * (128 + 2)),
    (LLAMA2_7B, "fp16", 524_288),
    (MQA, "bf16", 2 * 24 * 1 * 128 * 2),
])
def test_bytes_per_token(shape, dtype, per_token):
    assert kv_bytes_per_token(shape, dtype) == per_token
    assert kv_bytes_per_block(shape, dtype, 16) == 16 * per_token


def test_attention_kinds():
    assert [attention_kind(s.num_heads, s.num_kv_heads) for s in (LLAMA2_7B, LLAMA3_8B, MQA)] == ["MHA", "GQA", "MQA"]
    with pytest.raises(ValueError, match="multiple"):
        attention_kind(12, 5)


def test_batch_and_paging_round_up_to_blocks():
    per_token = kv_bytes_per_token(LLAMA3_8B)
    assert kv_cache_bytes(LLAMA3_8B, "fp16", 1000, batch_size=8) == 8 * 1000 * per_token
    assert kv_cache_bytes(LLAMA3_8B, "fp16", 1000, batch_size=8, block_size=16) == 8 * 1008 * per_token
    assert num_blocks_for_memory(LLAMA3_8B, "fp16", 16, 80 * 2**30) == 80 * 2**30 // (16 * per_token)


def test_report_takes_any_model_config():
    cfg = SimpleNamespace(num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, hidden_size=4096)
    shape = KVShape.of(cfg)
    report = kv_report(shape, "int8", context_tokens=8192, batch_size=4, block_size=16, memory_bytes=2**34)
    assert report["attention"] == "GQA" and report["bytes_per_token"] == 66_560
    assert report["scale_bytes_per_token"] == 2 * 32 * 8 * 2
    assert report["total_bytes"] == 4 * 8192 * 66_560
    assert report["num_blocks"] == 2**34 // (16 * 66_560)
    assert report["max_batch_size"] == report["num_blocks"] // 512
