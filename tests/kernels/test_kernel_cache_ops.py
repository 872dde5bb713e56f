"""Cache write (with INT8/FP8 quantization) and row copies: Triton (interpreted) against torch."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels import reference as ref


def _caches(gen, dtype, num_blocks=6, page=8, heads=3, dim=64):
    shape = (num_blocks, page, heads, dim)
    if dtype in (torch.float16, torch.bfloat16):
        return torch.randn(shape, generator=gen).to(dtype), torch.randn(shape, generator=gen).to(dtype), None
    k = torch.randn(shape, generator=gen).to(dtype)
    v = torch.randn(shape, generator=gen).to(dtype)
    scales = (torch.rand(shape[:3], generator=gen).half(), torch.rand(shape[:3], generator=gen).half())
    return k, v, scales


def _new_rows(gen, num_tokens, heads=3, dim=64):
    k = torch.randn(num_tokens, heads, dim, generator=gen).half() * 3
    v = torch.randn(num_tokens, heads, dim, generator=gen).half()
    k[1, 0] = 0  # an all-zero row gets scale 1
    # Ties: amax 127/16 makes the scale exactly 1/16, so (j + 0.5)/16 lands on j + 0.5 and must
    # round half to even like torch.round.
    k[2, 1] = (torch.arange(64) % 20 - 10 + 0.5).half() / 16
    k[2, 1, 0] = 127 / 16
    return k, v


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.element_size() == 1 else t


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int8, torch.float8_e4m3fn])
def test_write_kv_matches_reference(dtype):
    """Same bytes as write_kv_ref: INT8 ints and fp16 scales exactly; FP8 too; -1 slots skipped."""
    gen = torch.Generator().manual_seed(1)
    k_cache, v_cache, scales = _caches(gen, dtype)
    k, v = _new_rows(gen, 7)
    k, v = k.to(dtype if scales is None else torch.float16), v.to(dtype if scales is None else torch.float16)
    slots = torch.tensor([5, 17, 40, -1, 0, 47, 23], dtype=torch.int64)
    expected = [t.clone() for t in (k_cache, v_cache, *(scales or ()))]
    ref.write_kv_ref(k, v, expected[0], expected[1], slots, tuple(expected[2:]) or None)
    kernels.write_kv(k, v, k_cache, v_cache, slots, scales, interpret=True)
    for got, want in zip((k_cache, v_cache, *(scales or ())), expected):
        assert torch.equal(_bits(got), _bits(want))


def test_write_kv_int8_roundtrip_is_close():
    gen = torch.Generator().manual_seed(2)
    k_cache, v_cache, scales = _caches(gen, torch.int8, num_blocks=2, page=4)
    k, v = _new_rows(gen, 8)
    kernels.write_kv(k, v, k_cache, v_cache, torch.arange(8), scales, interpret=True)
    back = ref.dequantize_ref(k_cache.flatten(0, 1), scales[0].flatten(0, 1))
    assert ((back - k.float()).abs() <= k.float().abs().amax(-1, keepdim=True) / 254 * 1.01).all()


def test_copy_blocks_and_move_slots():
    gen = torch.Generator().manual_seed(3)
    k_cache, v_cache, scales = _caches(gen, torch.int8)
    layers = torch.randn(2, 6, 8, 3, 64, generator=gen).half()  # a stack of layers: block_dim=1
    caches = [k_cache, v_cache, *scales]
    want = [c.clone() for c in caches]
    want_layers = layers.clone()
    pairs = [(0, 3), (4, 1)]
    kernels.copy_blocks(caches, pairs, interpret=True)
    kernels.copy_blocks([layers], torch.tensor(pairs), block_dim=1, interpret=True)
    for w in want:
        w[[3, 1]] = w[[0, 4]]
    want_layers[:, [3, 1]] = want_layers[:, [0, 4]]
    for got, w in zip(caches + [layers], want + [want_layers]):
        assert torch.equal(_bits(got), _bits(w))

    src, dst = torch.tensor([45, 46, 9]), torch.tensor([2, 8, 30])  # flat slots, disjoint
    kernels.move_slots(caches, src, dst, interpret=True)
    kernels.move_slots([layers], src, dst, block_dim=1, interpret=True)
    for w in want:
        w.view(48, *w.shape[2:])[dst] = w.view(48, *w.shape[2:])[src]
    want_layers.view(2, 48, 3, 64)[:, dst] = want_layers.view(2, 48, 3, 64)[:, src]
    for got, w in zip(caches + [layers], want + [want_layers]):
        assert torch.equal(_bits(got), _bits(w))


def test_triton_copy_equals_reference_copy():
    """The two paths of copy_blocks agree (the CPU default runs the torch reference)."""
    gen = torch.Generator().manual_seed(4)
    a, _, _ = _caches(gen, torch.float16)
    b = a.clone()
    kernels.copy_blocks([a], [(2, 5), (1, 0)], interpret=True)
    kernels.copy_blocks([b], [(2, 5), (1, 0)], interpret=False)
    assert torch.equal(a, b)


def test_swap_blocks_between_pools():
    gen = torch.Generator().manual_seed(5)
    gpu_pool, _, _ = _caches(gen, torch.float16)
    host_pool = torch.zeros(4, *gpu_pool.shape[1:], dtype=torch.float16)
    kernels.swap_blocks([gpu_pool], [host_pool], [(5, 0), (2, 3)])
    assert torch.equal(host_pool[0], gpu_pool[5]) and torch.equal(host_pool[3], gpu_pool[2])
    assert host_pool[1].abs().sum() == 0
