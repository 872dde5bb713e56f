"""KV dtypes, quantization round trips, the physical store, the copy log executor and swap bytes."""

from __future__ import annotations

import pytest
import torch

from kernels.reference import paged_decode_attention_ref
from kvcache.copy_exec import apply_copies
from kvcache.copy_ops import DEVICE, SWAP_IN, SWAP_OUT, KVCopy
from kvcache.dtypes import KV_DTYPES, UnknownKVDtypeError, get_kv_dtype
from kvcache.kv_store import PagedKVStore
from kvcache.quant import dequantize, quantize
from kvcache.swap import HostSwapPool

HAS_FP8 = hasattr(torch, "float8_e4m3fn")
DTYPES = [name for name in KV_DTYPES if name != "fp8" or HAS_FP8]


def _kv(shape, seed=0):
    """Rows of mixed scale and offset: [..., D] float32."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * torch.rand(*shape[:-1], 1, generator=g) * 8
    x[0] = 0.0  # an all-zero row
    return x + torch.randn(*shape[:-1], 1, generator=g)


def test_registry_names_and_errors():
    assert get_kv_dtype("half").name == "fp16" and get_kv_dtype(torch.bfloat16).name == "bf16"
    assert get_kv_dtype(torch.float32).name == "fp32" and get_kv_dtype("e4m3").name == "fp8"
    with pytest.raises(UnknownKVDtypeError, match="unknown KV dtype 'int4'; valid: fp32, fp16, bf16, int8"):
        get_kv_dtype("int4")
    assert (KV_DTYPES["int8"].bytes_per_element, KV_DTYPES["int8"].scale_bytes) == (1, 2)
    assert KV_DTYPES["int8-asym"].scale_bytes == 4 and KV_DTYPES["fp16"].scale_bytes == 0


def test_int8_round_trip_within_amax_over_254():
    x = _kv((512, 4, 64))
    q, scale, zero = quantize(x, "int8")
    assert q.dtype == torch.int8 and scale.dtype == torch.float16 and scale.shape == (512, 4) and zero is None
    err = (x - dequantize(q, scale)).abs()
    amax = x.abs().amax(-1, keepdim=True)
    assert (err <= amax / 254 + amax * 2.0**-11 + 1e-7).all()  # + the fp16 rounding of the scale
    assert float((err / amax.clamp_min(1e-30)).max()) == pytest.approx(1 / 254, rel=0.01)


def test_int8_asymmetric_round_trip_within_half_a_step():
    x = _kv((512, 4, 64), seed=1) + 5.0  # off-centre rows, where a zero point pays
    q, scale, zero = quantize(x, "int8-asym")
    assert zero.dtype == torch.float16 and zero.shape == (512, 4)
    err = (x - dequantize(q, scale, zero)).abs()
    # half a step, plus float32 rounding of the offset arithmetic
    assert (err <= scale.float()[..., None] / 2 + 2.0**-21 * (x.abs() + zero.float().abs()[..., None])).all()
    span = x.amax(-1) - x.amin(-1)
    assert (scale.float() <= (span + x.amin(-1).abs() * 2.0**-10) / 255 * (1 + 2.0**-10) + 1e-6).all()
    sym_err = (x - dequantize(*quantize(x, "int8")[:2])).abs()
    assert err.mean() < sym_err.mean()


@pytest.mark.skipif(not HAS_FP8, reason="this torch has no float8_e4m3fn")
def test_fp8_round_trip_within_e4m3_precision():
    x = _kv((512, 4, 64), seed=2)
    q, scale, _ = quantize(x, "fp8")
    assert q.dtype == torch.float8_e4m3fn
    err = (x - dequantize(q, scale)).abs()
    s, amax = scale.float()[..., None], x.abs().amax(-1, keepdim=True)
    # 3 mantissa bits: half a step is 2^-4 of the value; subnormal half step 2^-10 scale
    assert (err <= x.abs() * 2.0**-4 + s * 2.0**-10 + amax * 2.0**-11 + 1e-7).all()


@pytest.mark.parametrize("name", DTYPES)
def test_store_writes_reads_and_sizes_every_dtype(name):
    store = PagedKVStore(2, 6, 4, 2, 8, dtype=name)
    assert store.spec.name == name
    assert sum(t.nbytes for t in store.slot_tensors()) == store.num_blocks * store.block_bytes
    k, v = _kv((5, 2, 8), seed=3), _kv((5, 2, 8), seed=4)
    slots = torch.tensor([3, -1, 9, 17, 22])
    store.write(1, k, v, slots)
    rk, rv = store.read(1, slots[slots >= 0])
    keep = slots >= 0
    # exactly what the quantization reference gives for these rows
    assert torch.equal(rk, dequantize(*quantize(k[keep], name)))
    assert torch.equal(rv, dequantize(*quantize(v[keep], name)))
    assert store.read(0, slots[keep])[0].abs().max() == 0  # layer 0 untouched, reads as zeros


def test_layer_gives_the_kernels_their_scales():
    assert PagedKVStore(1, 2, 4, 1, 8, dtype="fp16").layer(0)[2] is None
    k_cache, _, (k_scale, v_scale) = PagedKVStore(1, 2, 4, 1, 8, dtype="int8").layer(0)
    assert k_cache.shape == (2, 4, 1, 8) and k_scale.shape == v_scale.shape == (2, 4, 1)
    with pytest.raises(UnknownKVDtypeError, match="zero points"):
        PagedKVStore(1, 2, 4, 1, 8, dtype="int8-asym").layer(0)


def test_int8_cache_attention_is_close_to_fp32():
    g = torch.Generator().manual_seed(5)
    num_blocks, bs, hkv, d, n = 8, 4, 2, 16, 27
    k, v = torch.randn(n, hkv, d, generator=g), torch.randn(n, hkv, d, generator=g)
    table = torch.randperm(num_blocks, generator=g)[None]
    slots = torch.tensor([int(table[0, i // bs]) * bs + i % bs for i in range(n)])
    q = torch.randn(1, 4, d, generator=g)
    outs = []
    for name in ("fp32", "int8"):
        store = PagedKVStore(1, num_blocks, bs, hkv, d, dtype=name)
        store.write(0, k, v, slots)
        kc, vc, scales = store.layer(0)
        outs.append(paged_decode_attention_ref(q, kc, vc, table, torch.tensor([n]), d**-0.5, scales))
    torch.testing.assert_close(outs[1], outs[0], atol=2e-2, rtol=0)


def test_copy_log_runs_in_order_even_when_copies_chain():
    store = PagedKVStore(1, 4, 2, 1, 1, dtype="fp32")
    store.k.view(-1)[:] = torch.arange(8.0)
    apply_copies([KVCopy(DEVICE, 0, 2, 2),  # block 0 -> block 1
                  KVCopy(DEVICE, 2, 4, 2),  # block 1 (now block 0's data) -> block 2
                  KVCopy(DEVICE, 7, 0, 1),  # a slot move into a block read above
                  KVCopy(DEVICE, 6, 0, 1)], store)  # rewrites the same slot: the later wins
    assert store.k.view(-1).tolist() == [6.0, 1.0, 0.0, 1.0, 0.0, 1.0, 6.0, 7.0]


@pytest.mark.parametrize("name", DTYPES)
def test_swap_round_trip_restores_every_byte(name):
    store = PagedKVStore(2, 6, 4, 2, 8, dtype=name)
    g = torch.Generator().manual_seed(6)
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32}
    for t in store.slot_tensors():  # arbitrary bit patterns, NaNs included
        raw = t.view(as_int[t.element_size()])
        raw.copy_(torch.randint(-100, 100, raw.shape, generator=g).to(raw.dtype))
    before = [t.clone() for t in store.slot_tensors()]
    pool = HostSwapPool(store, 3)
    bs = store.block_size
    apply_copies([KVCopy(SWAP_OUT, 4 * bs, 0, bs), KVCopy(SWAP_OUT, 1 * bs, 2 * bs, bs)], store, pool)
    for t in store.slot_tensors():
        t.zero_()
    apply_copies([KVCopy(SWAP_IN, 0, 4 * bs, bs), KVCopy(SWAP_IN, 2 * bs, 1 * bs, bs)], store, pool)
    for old, new in zip(before, store.slot_tensors()):
        for block in (1, 4):
            assert torch.equal(old[:, block].view(torch.uint8), new[:, block].view(torch.uint8))
    assert pool.bytes_out == pool.bytes_in == 2 * store.block_bytes
