"""KV cache sizing: bytes for a model shape, a KV dtype, a context and a batch.

The arithmetic the CLI calculator prints, and what the manager needs as `block_bytes`. Per
token and layer a cache holds K and V for every KV head: 2 * num_kv_heads * (head_dim *
bytes_per_element + scale_bytes), scale_bytes being the INT8/FP8 scale (and zero point) per
(token, kv head). MHA, GQA and MQA differ only in num_kv_heads. A paged cache rounds each
sequence up to whole blocks. The shape is anything with num_layers, num_kv_heads, head_dim
(and num_heads for the attention kind), e.g. engine.config.ModelConfig or `KVShape`.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvcache.dtypes import KVDtype, get_kv_dtype


@dataclass(frozen=True)
class KVShape:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    num_heads: int = 0  # query heads; 0 = same as num_kv_heads (MHA)

    @classmethod
    def of(cls, model) -> "KVShape":
        """The KV-relevant shape of any model config."""
        return cls(model.num_layers, model.num_kv_heads, model.head_dim,
                   getattr(model, "num_heads", 0) or model.num_kv_heads)


def attention_kind(num_heads: int, num_kv_heads: int) -> str:
    """MHA (one KV head per query head), MQA (one KV head) or GQA (in between)."""
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    if num_kv_heads == num_heads:
        return "MHA"
    return "MQA" if num_kv_heads == 1 else "GQA"


def kv_bytes_per_token_layer(shape, dtype: str | KVDtype = "fp16") -> int:
    """K + V bytes of one token in one layer, scales included."""
    spec = get_kv_dtype(dtype)
    return 2 * shape.num_kv_heads * (shape.head_dim * spec.bytes_per_element + spec.scale_bytes)


def kv_bytes_per_token(shape, dtype: str | KVDtype = "fp16") -> int:
    """K + V bytes of one token over all layers, scales included."""
    return shape.num_layers * kv_bytes_per_token_layer(shape, dtype)


def kv_bytes_per_block(shape, dtype: str | KVDtype, block_size: int) -> int:
    """Bytes of one paged block over all layers (what a swap moves per block)."""
    return block_size * kv_bytes_per_token(shape, dtype)


def kv_cache_bytes(shape, dtype: str | KVDtype, context_tokens: int, batch_size: int = 1,
                   block_size: int | None = None) -> int:
    """KV bytes of batch_size sequences of context_tokens each (whole blocks if block_size)."""
    tokens = context_tokens if block_size is None else -(-context_tokens // block_size) * block_size
    return batch_size * tokens * kv_bytes_per_token(shape, dtype)


def num_blocks_for_memory(shape, dtype: str | KVDtype, block_size: int, memory_bytes: int) -> int:
    """How many blocks fit in memory_bytes."""
    return memory_bytes // kv_bytes_per_block(shape, dtype, block_size)


def kv_report(shape, dtype: str | KVDtype, context_tokens: int, batch_size: int = 1,
              block_size: int = 16, memory_bytes: int | None = None) -> dict[str, object]:
    """Everything the calculator prints, as one flat record."""
    spec = get_kv_dtype(dtype)
    num_heads = getattr(shape, "num_heads", 0) or shape.num_kv_heads
    per_token = kv_bytes_per_token(shape, spec)
    out: dict[str, object] = {
        "attention": attention_kind(num_heads, shape.num_kv_heads), "kv_dtype": spec.name,
        "num_layers": shape.num_layers, "num_heads": num_heads, "num_kv_heads": shape.num_kv_heads,
        "head_dim": shape.head_dim, "block_size": block_size,
        "bytes_per_token": per_token,
        "scale_bytes_per_token": 2 * shape.num_layers * shape.num_kv_heads * spec.scale_bytes,
        "bytes_per_block": kv_bytes_per_block(shape, spec, block_size),
        "context_tokens": context_tokens, "batch_size": batch_size,
        "total_bytes": kv_cache_bytes(shape, spec, context_tokens, batch_size, block_size),
    }
    if memory_bytes is not None:
        blocks = num_blocks_for_memory(shape, spec, block_size, memory_bytes)
        per_seq = -(-context_tokens // block_size)
        out.update(memory_bytes=memory_bytes, num_blocks=blocks, max_tokens=blocks * block_size,
                   max_batch_size=blocks // per_seq if per_seq else 0)
    return out
