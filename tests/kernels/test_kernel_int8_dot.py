"""The int8 Q.K^T dot of INT8 decode ("i8dot"): the query's two int8 parts, their packing into one
MMA, which conversion runs where, and the kernel on queries with outlier channels."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels import decode_config as dc
from kernels import reference as ref
from kernels._dispatch import triton_module
from paged_cases import make_cache, rel_err

triton_module("decode_attention", "interpret")  # the interpreter, before triton is imported below
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from kernels import attention_tile as tile  # noqa: E402

STEPS = int(getattr(tile.Q_LO_STEPS, "value", tile.Q_LO_STEPS))


@triton.jit
def _query_operand_kernel(q_ptr, a_ptr, b_ptr, unit_ptr, M: tl.constexpr, D: tl.constexpr, PACK: tl.constexpr):
    """query_operand of q [M, D] fp32: PACK stores (packed parts [M, D], unit [M / 2]), else
    (hi, lo [M, D], unit [M])."""
    r = tl.arange(0, M)
    d = tl.arange(0, D)
    tile_2d = r[:, None] * D + d[None, :]
    parts = tile.query_operand(tl.load(q_ptr + tile_2d), tl.float16, tile.I8_DOT, PACK)
    if PACK:
        packed, unit = parts
        tl.store(a_ptr + tile_2d, packed)
        tl.store(unit_ptr + tl.arange(0, M // 2), unit)
    else:
        hi, lo, unit = parts
        tl.store(a_ptr + tile_2d, hi)
        tl.store(b_ptr + tile_2d, lo)
        tl.store(unit_ptr + r, unit)


def _query_operand(q: torch.Tensor, pack: bool):
    rows, dim = q.shape
    a, b = torch.zeros(rows, dim, dtype=torch.int8), torch.zeros(rows, dim, dtype=torch.int8)
    unit = torch.zeros(rows // 2 if pack else rows)
    _query_operand_kernel[(1,)](q, a, b, unit, M=rows, D=dim, PACK=pack)
    return (a, unit) if pack else (a, b, unit)


def _queries() -> torch.Tensor:
    """[16, 64] fp16 values as fp32: normal rows, an outlier channel, a zero row, fp16's extremes."""
    gen = torch.Generator().manual_seed(21)
    q = torch.randn(16, 64, generator=gen)
    q[1, 5] = 60.0                      # an outlier channel, as real queries have
    q[2] = 0.0                          # a padded head
    q[3] = torch.rand(64, generator=gen) * 2 ** -20  # tiny (fp16 subnormals)
    q[4, :] = 65504.0                   # fp16's largest, everywhere
    q[5, ::2] *= -1000.0
    q[6, 0] = -1.0                      # one nonzero value
    q[7] = torch.linspace(-1, 1, 64)    # values on the half steps of s1 (ties round up)
    return q.half().float()


def test_two_int8_parts_keep_the_query_to_unit_over_two():
    """q = unit * (254 * hi + lo) to within unit / 2 = max|row| / 64516 an element (plus fp32's
    rounding of the scales, < 1 %), both parts in [-127, 127]: the first part alone would be off
    by up to max|row| / 254."""
    q = _queries()
    hi, lo, unit = _query_operand(q, pack=False)
    assert hi.abs().max() <= 127 and lo.abs().max() <= 127
    amax = q.abs().amax(1)
    torch.testing.assert_close(unit, torch.where(amax > 0, amax / 127 / STEPS, 1 / STEPS))
    back = unit[:, None].double() * (STEPS * hi.double() + lo.double())
    err = (back - q.double()).abs().amax(1)
    assert (err <= unit.double() / 2 * 1.01).all(), err / unit
    assert torch.equal(hi[2], torch.zeros_like(hi[2])) and torch.equal(lo[2], torch.zeros_like(lo[2]))
    one_part = (unit[:, None].double() * STEPS * hi.double() - q.double()).abs().amax(1)
    assert (one_part[8:] > 100 * err[8:]).all()  # random rows: the second part is what makes them exact


def test_packed_query_holds_hi_above_lo():
    """PACK: rows r and r + R of the input hold the same head; the operand takes hi from the first
    R rows and lo from the last R (one MMA of 16 rows makes both products), unit per head."""
    q = _queries()[:8]
    hi, lo, unit = _query_operand(q, pack=False)
    packed, unit_r = _query_operand(torch.cat([q, q]), pack=True)
    assert torch.equal(packed[:8], hi) and torch.equal(packed[8:], lo)
    assert torch.equal(unit_r, unit)


def test_i8dot_runs_where_it_applies():
    """"i8dot" on the GPU; under the interpreter the same dot with V converted by .to(fp16) (no
    PTX); fp16 queries only; "prmt" below a head dim of 32 (an int8 MMA's k)."""
    k = torch.zeros(4, 16, 2, 128, dtype=torch.int8)
    q16 = torch.zeros(1, 8, 128, dtype=torch.float16)
    mode = tile.i8_convert_mode
    assert mode("i8dot", k, k, q16, 128, interpreted=False) == tile.I8_DOT
    assert mode("i8dot", k, k, q16, 128, interpreted=True) == tile.I8_DOT_V_I2F
    assert mode("i8dot", k, k, q16.bfloat16(), 128, interpreted=False) == tile.I8_I2F
    k16 = torch.zeros(4, 16, 2, 16, dtype=torch.int8)
    assert mode("i8dot", k16, k16, q16[..., :16], 16, interpreted=False) == tile.I8_PRMT


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(8, 2, 128), (6, 2, 64), (32, 2, 64)])
def test_i8dot_with_outlier_query_channels(num_heads, num_kv_heads, head_dim, monkeypatch):
    """Real queries have a few channels far above the rest; the first int8 part's step is then
    coarse for the others, the second keeps them: the bound holds with margin (groups of 4, 3
    packed into one MMA, and 16, two dots)."""
    monkeypatch.setattr(dc, "INT8_CONVERT", "i8dot")
    gen = torch.Generator().manual_seed(head_dim + num_heads)
    cache = make_cache(gen, [1, 70, 129], 16, num_kv_heads, head_dim, "int8")
    q = torch.randn(3, num_heads, head_dim, generator=gen)
    q[:, :, :3] *= 40.0  # outlier channels
    q = q.half()
    scale = head_dim ** -0.5 / 8  # keep the outliers' logits from making one-hot softmaxes
    scores, expected_scores = (torch.zeros(3, num_kv_heads, cache.max_slots) for _ in range(2))
    expected = ref.paged_decode_attention_ref(q.float(), cache.k, cache.v, cache.block_tables, cache.seq_lens,
                                              scale, cache.kv_scales, expected_scores)
    for num_splits in (1, 3):
        out = torch.full_like(q, float("nan"))
        scores.zero_()
        kernels.paged_decode_attention(q, cache.k, cache.v, cache.block_tables, cache.seq_lens, scale,
                                       cache.kv_scales, scores, out=out, num_splits=num_splits, interpret=True)
        assert rel_err(out, expected) <= 2e-3 / 4, (num_splits, rel_err(out, expected))
        torch.testing.assert_close(scores, expected_scores, rtol=1e-3, atol=2e-5)
