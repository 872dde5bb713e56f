"""Benchmark kvsim's paged-attention kernels on a GPU against their peers, in one run.

    PYTHONPATH=. python3 bench/kernels.py [--out DIR] [--budget-s 240] [--skip flex]

1. Correctness on the GPU against the torch reference: decode (fp16, bf16, INT8 with each of its
   conversions, FP8, split-K, score_out), prefill, the cache write (INT8/FP8 bytes exactly) and
   block/slot copies.
2. The bandwidth floor: a device-to-device copy measured in the same run.
3. Decode per shape (B, L, Hq, Hkv, D): ours fp16, fp16 + score_out, INT8; torch SDPA on a
   contiguous KV (enable_gqa); gather-pages-then-SDPA; FlexAttention with a paged block mask.
   Before them, tune() chooses on CUDA-graph times and installs in the module: the INT8
   conversion (among those that passed 1.), the tile config and split rule per (dtype, head
   dim), and where score_out's probabilities are made; the checks run again with the result
   (any failure reverts to the defaults). The JSON's "defaults" are what ran, and "patch" (also
   printed last) the lines to paste into kernels/decode_config.py to make them the defaults.
   4. Prefill: our Triton kernel against gather-then-SDPA. Flex (which compiles per shape) runs
   last, while the budget lasts.
Two timings: eager medians of triton.testing.do_bench (it flushes the L2 before every call; host
launch cost shows where the GPU work is shorter than it) and GPU time from CUDA-graph replays
rotating over input copies that overflow the L2. The table is printed last; kernels_<gpu>.json is written
to --out (default $OUT, else bench/results) after every stage.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
import time

# This file is bench/kernels.py: as a script its folder comes first on sys.path and would shadow
# the `kernels` package, so the repository root takes its place.
_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_BENCH)] + [p for p in sys.path if os.path.abspath(p or ".") != _BENCH]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
import triton.testing  # noqa: E402

import kernels  # noqa: E402
from bench.common import copy_bandwidth  # noqa: E402
from kernels import decode_config  # noqa: E402
from kernels import reference as ref  # noqa: E402
from kernels._dispatch import num_sms, triton_module  # noqa: E402
from kernels.scores_ref import paged_prefill_scores_ref  # noqa: E402

SHAPES = [(1, 4096, 32, 8, 128), (1, 32768, 32, 8, 128), (16, 4096, 32, 8, 128), (64, 4096, 32, 8, 128),
          (256, 2048, 32, 8, 128), (64, 16384, 32, 8, 128), (64, 4096, 9, 3, 64)]
PAGE = 16          # our page size; Flex gets 128-slot pages, the block size its kernels want
FLEX_PAGE = 128
LARGE_TOKENS = 256 * 1024  # B*L from which the SDPA-parity and bandwidth floors apply
CHECK_LENS = [1, 17, 1000, 4099, 0, 333]
CHECK_PREFILL = ([300, 64, 1], [300, 1000, 77])
PREFILL_SHAPES = [(4, 2048, 0, 32, 8, 128), (8, 512, 3584, 32, 8, 128), (16, 128, 1920, 32, 8, 128)]
DEV = torch.device("cuda")
BACKEND = "triton"  # --smoke: "interpret", on the CPU with tiny shapes, to test this script
SMOKE = False
INT8_MODES_OK: dict = {}  # INT8 conversion -> passed the GPU check (set by main)


@contextlib.contextmanager
def _setting(mod, name, value):
    """Module attribute `name` = value inside the block, restored after."""
    saved = getattr(mod, name)
    setattr(mod, name, value)
    try:
        yield
    finally:
        setattr(mod, name, saved)


def ms(fn) -> float:
    if SMOKE:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median")


def rel_err(out, expected) -> float:
    return ((out.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-30)).item()


def paged(batch, lens, num_kv_heads, head_dim, page, dtype, gen):
    """Random paged K/V for sequences of `lens` with shuffled block tables (+ scales if 1-byte)."""
    max_blocks = max(1, max(-(-n // page) for n in lens))
    num_blocks = -(-(batch * max_blocks + 1) // 8) * 8  # a spare block; whole 128-slot pages for Flex
    shape = (num_blocks, page, num_kv_heads, head_dim)
    tables = torch.randperm(num_blocks, device=DEV, generator=gen)[: batch * max_blocks].view(batch, -1).int()
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEV)
    if dtype.itemsize == 1:
        k, v = (torch.randn(shape, device=DEV, generator=gen) for _ in range(2))
        (kq, ks), (vq, vs) = ref.quantize_ref(k, dtype), ref.quantize_ref(v, dtype)
        return kq, vq, (ks, vs), tables, seq_lens
    k, v = (torch.randn(shape, device=DEV, generator=gen, dtype=dtype) for _ in range(2))
    return k, v, None, tables, seq_lens


# ---------------------------------------------------------------- 1. correctness on the GPU
def check_correctness(decode_only: bool = False, names: tuple = ("fp16", "bf16", "int8", "fp8"),
                      plain_one_split: bool = True) -> list[dict]:
    gen = torch.Generator(device=DEV).manual_seed(0)
    rows = []

    def record(what, err, bound):
        rows.append({"check": what, "rel_err": err, "bound": bound, "pass": bool(err <= bound)})

    lens = CHECK_LENS
    fp8 = getattr(torch, "float8_e4m3fn", None)
    # (16, 1, 64): INT8 only, a group over 8 (the int8 dot's query parts in two MMAs, not one)
    for (hq, hkv, d, page) in [(32, 8, 128, 16), (9, 3, 64, 64), (8, 1, 128, 32), (16, 1, 64, 16)]:
        for name, kv_dtype, q_dtype, bound in [("fp16", torch.float16, torch.float16, 2e-3),
                                               ("bf16", torch.bfloat16, torch.bfloat16, 1e-2),
                                               ("int8", torch.int8, torch.float16, 2e-3),
                                               ("fp8", fp8, torch.bfloat16, 1e-2)]:
            if kv_dtype is None or name not in names or (hq != 32 and name in ("bf16", "fp8")):
                continue
            if hq == 16 and name != "int8":
                continue
            k, v, scales, tables, seq_lens = paged(len(lens), lens, hkv, d, page, kv_dtype, gen)
            q = torch.randn(len(lens), hq, d, device=DEV, generator=gen).to(q_dtype)
            expected_scores = torch.zeros(len(lens), hkv, tables.shape[1] * page, device=DEV)
            expected = ref.paged_decode_attention_ref(q.float(), k, v, tables, seq_lens, d ** -0.5, scales,
                                                      expected_scores)
            for splits in (None, 1, 7):
                scores = torch.zeros_like(expected_scores)
                out = torch.full_like(q, float("nan"))
                kernels.paged_decode_attention(q, k, v, tables, seq_lens, d ** -0.5, scales, scores, out=out,
                                               num_splits=splits, interpret=SMOKE)
                tag = f"decode {name} Hq{hq}/Hkv{hkv} D{d} page{page} splits={splits}"
                record(tag, math.inf if out.isnan().any() else rel_err(out, expected), bound)
                record(tag + " score_out", (scores - expected_scores).abs().max().item(), 1e-3)
            if not plain_one_split:
                continue
            out = torch.full_like(q, float("nan"))  # the timed one-split path: no score_out
            kernels.paged_decode_attention(q, k, v, tables, seq_lens, d ** -0.5, scales, out=out, num_splits=1,
                                           interpret=SMOKE)
            record(f"decode {name} Hq{hq}/Hkv{hkv} D{d} page{page} splits=1 no score_out",
                   math.inf if out.isnan().any() else rel_err(out, expected), bound)
    if decode_only:
        return rows
    # prefill: a full prompt, a prefix hit and a single token, fp16 / INT8 / bf16
    for name, kv_dtype, q_dtype, bound in [("fp16", torch.float16, torch.float16, 2e-3),
                                           ("int8", torch.int8, torch.float16, 2e-3),
                                           ("bf16", torch.bfloat16, torch.bfloat16, 1e-2)]:
        for hq, hkv, d in [(32, 8, 128), (9, 3, 64)]:
            new, lens_p = CHECK_PREFILL  # a full prompt, a prefix hit, one token
            k, v, scales, tables, seq_lens = paged(3, lens_p, hkv, d, PAGE, kv_dtype, gen)
            cu = torch.tensor([0] + new, device=DEV).cumsum(0).to(torch.int32)
            q = torch.randn(sum(new), hq, d, device=DEV, generator=gen).to(q_dtype)
            args = (k, v, tables, cu, seq_lens, d ** -0.5, scales)
            expected = ref.paged_prefill_attention_ref(q.float(), *args)
            tri = triton_module("prefill_attention", BACKEND).paged_prefill_attention(q, *args)
            record(f"prefill triton {name} Hq{hq}/Hkv{hkv} D{d}", rel_err(tri, expected), bound)
            record(f"prefill sdpa {name} Hq{hq}/Hkv{hkv} D{d}", rel_err(ref.paged_prefill_attention_sdpa(q, *args), expected), bound)
            # the prefill score kernel (H2O, TOVA, SnapKV) against the torch reference, with a window on one row
            want = torch.zeros(3, hkv, tables.shape[1] * PAGE, device=DEV)
            windows = torch.tensor([0, 5, 0], device=DEV, dtype=torch.int32)
            paged_prefill_scores_ref(q.float(), *args[:6], want, windows, scales)
            got = torch.zeros_like(want)
            kernels.paged_prefill_scores(q, *args[:6], got, windows, scales, interpret=SMOKE)
            record(f"prefill scores triton {name} Hq{hq}/Hkv{hkv} D{d}", rel_err(got, want), bound)
    # cache write: INT8 and FP8 bytes and scales exactly as quantize_ref, fp16 as is
    for kv_dtype in [torch.float16, torch.int8] + ([fp8] if fp8 else []):
        shape = (40, PAGE, 8, 128)
        k_cache, v_cache = torch.zeros(shape, device=DEV, dtype=kv_dtype), torch.zeros(shape, device=DEV, dtype=kv_dtype)
        scales = None if kv_dtype.itemsize == 2 else tuple(torch.zeros(shape[:3], device=DEV, dtype=torch.float16) for _ in range(2))
        k, v = (torch.randn(300, 8, 128, device=DEV, generator=gen).half() * 4 for _ in range(2))
        slots = torch.randperm(40 * PAGE, device=DEV, generator=gen)[:300]
        slots[::7] = -1
        want = [t.clone() for t in (k_cache, v_cache, *(scales or ()))]
        ref.write_kv_ref(k, v, want[0], want[1], slots, tuple(want[2:]) or None)
        kernels.write_kv(k, v, k_cache, v_cache, slots, scales, interpret=SMOKE)
        same = all(torch.equal(a.view(torch.uint8) if a.element_size() == 1 else a,
                               b.view(torch.uint8) if b.element_size() == 1 else b)
                   for a, b in zip((k_cache, v_cache, *(scales or ())), want))
        record(f"write_kv {kv_dtype} bytes equal quantize_ref", 0.0 if same else 1.0, 0.0)
    # copies
    cache = torch.randn(2, 50, PAGE, 8, 128, device=DEV, generator=gen).half()
    want = cache.clone()
    kernels.copy_blocks([cache], [(3, 40), (7, 1)], block_dim=1, interpret=SMOKE)
    want[:, [40, 1]] = want[:, [3, 7]]
    kernels.move_slots([cache], torch.tensor([5, 700], device=DEV), torch.tensor([17, 33], device=DEV), block_dim=1,
                       interpret=SMOKE)
    flat = want.view(2, 50 * PAGE, 8, 128)
    flat[:, [17, 33]] = flat[:, [5, 700]]
    record("copy_blocks + move_slots", 0.0 if torch.equal(cache, want) else 1.0, 0.0)
    return rows


# ---------------------------------------------------------------- 2-3. bandwidth and decode timings
def gpu_ms(fns) -> float:
    """GPU time of one call: the calls captured in a CUDA graph (no host overhead), replayed;
    fns rotate over input copies that together overflow the L2, so small shapes read HBM too."""
    if SMOKE:
        return ms(fns[0])
    for fn in fns:
        fn()
    torch.cuda.synchronize()
    reps = max(8, len(fns))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(reps):
            fns[i % len(fns)]()
    graph.replay()
    times = []
    for _ in range(7):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / reps)
    return sorted(times)[len(times) // 2]


def decode_inputs(shape, gen) -> dict:
    """q, tables and enough copies of the caches (fp16, INT8, contiguous) to overflow the L2."""
    batch, length, hq, hkv, d = shape
    fp16_bytes = batch * length * hkv * d * 2 * 2
    num_copies = 1 if SMOKE else min(12, max(1, math.ceil(200e6 / fp16_bytes)))
    copies = []
    for _ in range(num_copies):
        k, v, _, tables, seq_lens = paged(batch, [length] * batch, hkv, d, PAGE, torch.float16, gen)
        k8, v8 = (torch.randint(-127, 128, k.shape, device=DEV, dtype=torch.int8, generator=gen) for _ in range(2))
        s8 = tuple(torch.rand(k.shape[:3], device=DEV, generator=gen).half() * 0.02 for _ in range(2))
        kc = torch.randn(batch, hkv, length, d, device=DEV, generator=gen, dtype=torch.float16)
        copies.append({"k": k, "v": v, "k8": k8, "v8": v8, "s8": s8, "kc": kc, "vc": torch.randn_like(kc),
                       "tables": tables, "seq_lens": seq_lens})
    q = torch.randn(batch, hq, d, device=DEV, generator=gen, dtype=torch.float16)
    return {"q": q, "copies": copies, "scores": torch.zeros(batch, hkv, length, device=DEV),
            "k": copies[0]["k"], "v": copies[0]["v"], "tables": copies[0]["tables"], "seq_lens": copies[0]["seq_lens"]}


def decode_fns(shape, inp) -> dict:
    """name -> one callable per input copy."""
    batch, length, hq, hkv, d = shape
    q, scale, q4 = inp["q"], d ** -0.5, inp["q"][:, :, None]  # q4 [B, Hq, 1, D]

    def ours(c, kv8=False, scores=None):
        k, v, s = (c["k8"], c["v8"], c["s8"]) if kv8 else (c["k"], c["v"], None)
        return lambda: kernels.paged_decode_attention(q, k, v, c["tables"], c["seq_lens"], scale, s, scores,
                                                      max_seq_len=length, interpret=SMOKE)

    def sdpa(c):
        return lambda: F.scaled_dot_product_attention(q4, c["kc"], c["vc"], scale=scale, enable_gqa=True)

    def gather_sdpa(c):
        def fn():
            kg = c["k"][c["tables"].long()].view(batch, -1, hkv, d)[:, :length].transpose(1, 2)
            vg = c["v"][c["tables"].long()].view(batch, -1, hkv, d)[:, :length].transpose(1, 2)
            return F.scaled_dot_product_attention(q4, kg, vg, scale=scale, enable_gqa=True)
        return fn

    cs = inp["copies"]
    return {"ours_fp16": [ours(c) for c in cs], "ours_int8": [ours(c, kv8=True) for c in cs],
            "ours_fp16_scores": [ours(c, scores=inp["scores"]) for c in cs], "sdpa_contiguous": [sdpa(c) for c in cs],
            "gather_sdpa": [gather_sdpa(c) for c in cs[:1]]}


def decode_shape(shape, inp) -> dict:
    """Times of every implementation for one shape: do_bench (eager, L2 flushed) and CUDA graph."""
    batch, length, hq, hkv, d = shape
    mod = decode_config
    cfg = mod.default_config(d, torch.float16)
    r = {"shape": dict(zip(["B", "L", "Hq", "Hkv", "D"], shape)), "page": PAGE,
         "bytes_fp16": batch * length * hkv * d * 2 * 2, "bytes_int8": batch * length * hkv * (d + 2) * 2,
         "config_fp16": vars(cfg), "config_int8": vars(mod.default_config(d, torch.int8)),
         "num_splits": mod.choose_num_splits(batch, hkv, length, num_sms(DEV), cfg.block_n, cfg.programs_per_sm,
                                             cfg.min_split_tiles),
         "int8_convert": mod.INT8_CONVERT, "scores_in_split": mod.SCORES_IN_SPLIT,
         "input_copies_for_graph_timing": len(inp["copies"])}
    fns_all = decode_fns(shape, inp)
    for name, fns in fns_all.items():
        r[f"{name}_ms"] = ms(fns[0])
        if name != "gather_sdpa":
            r[f"{name}_gpu_ms"] = gpu_ms(fns)
    # The alternatives the defaults were chosen against, GPU time only: every other INT8
    # conversion that passed the GPU check (ours_int8_<mode>_gpu_ms), the other score_out path
    # where one split runs, and the split count the occupancy rule alone would give where the
    # one-split rule applies.
    for mode in TUNE_INT8_MODES:
        if mode != mod.INT8_CONVERT and INT8_MODES_OK.get(mode):
            with _setting(mod, "INT8_CONVERT", mode):
                r[f"ours_int8_{mode}_gpu_ms"] = gpu_ms(fns_all["ours_int8"])
    if r["num_splits"] == 1:
        other = "stage2" if mod.SCORES_IN_SPLIT else "in_split"
        with _setting(mod, "SCORES_IN_SPLIT", not mod.SCORES_IN_SPLIT):
            r[f"ours_fp16_scores_{other}_gpu_ms"] = gpu_ms(fns_all["ours_fp16_scores"])
    if r["num_splits"] == 1 and batch * hkv >= mod.ONE_SPLIT_WAVES * num_sms(DEV):
        with _setting(mod, "ONE_SPLIT_WAVES", 10**9):
            r["num_splits_without_one_split_rule"] = mod.choose_num_splits(
                batch, hkv, length, num_sms(DEV), cfg.block_n, cfg.programs_per_sm, cfg.min_split_tiles)
            for name in ("ours_fp16", "ours_fp16_scores"):
                r[f"{name}_multisplit_gpu_ms"] = gpu_ms(fns_all[name])
    return r


# ---------------------------------------------------------------- tuning: configs and split count
# Candidates, most promising first (each step stops at the deadline, keeping what it timed).
# (KV element bytes, head dim): (block_n, num_warps, num_stages, row_sums); the defaults come
# first. INT8 D128 with the "prmt_kv" conversion (sass for sm_90 from triton 3.6: instructions a
# loop per warp, per token, registers): (64, 4) 579 / 36 / 128, with row sums 561 / 35 / 136;
# (128, 4) 942 / 29 / 144; (64, 2) 950 / 30 / 186; "bits" (64, 4) 947 / 59 / 128; fp16 360 / 23 / 96.
# Dropped after runs 2/3: 3 stages and 8 warps for INT8 D128, fp16 D128 (tuned in run 2, its
# loop unchanged but for the page shift), 256-token tiles for D64.
TUNE_CONFIGS = {
    (1, 128): [(64, 4, 2, False), (64, 4, 2, True), (128, 4, 2, False), (64, 2, 2, False)],
    (2, 64): [(64, 4, 3, False), (128, 4, 2, False), (64, 4, 2, False)],
    (2, 128): [(64, 4, 2, False)],
    (1, 64): [(128, 4, 2, False), (64, 4, 2, False)],
}
# "i2f" is the fallback (run 3: 1.6x slower than "bits"). "i8dot" (run 5): K into an int8 dot, never
# converted; loop 421 instructions a warp against prmt's 595 (D128 sass, triton 3.6; PERF_NOTES.md).
TUNE_INT8_MODES = ("bits", "prmt", "prmt_kv", "i8dot")
TUNE_SPLITS = [(16, 4), (8, 4), (4, 4), (32, 4), (16, 2), (8, 2), (32, 2), (32, 1), (16, 1)]  # (programs/SM, min tiles)
TUNE_SCORE_PROGRAMS = (8, 4, 16)
TUNE_SCORE_BLOCKS = (256, 512, 1024)  # run 5: a candidate, not yet timed
# D64 (SmolLM2) also at 128-256 rows (one split: B x Hkv fills two waves), not only at 64: INT8's
# kernel, tuned there (0.83-0.91x fp16's time), took 1.12-1.31x fp16's at 128-256 rows x 2,048-8,192
# tokens in the H100 profile of 2026-12-06 10:19 (its decode_attention table)
SMOLLM2_SHAPES = [(64, 4096, 9, 3, 64), (128, 2048, 9, 3, 64), (256, 2048, 9, 3, 64)]
TUNE_SHAPES = {128: [(64, 4096, 32, 8, 128), (64, 16384, 32, 8, 128), (16, 4096, 32, 8, 128)], 64: SMOLLM2_SHAPES}
SPLIT_SHAPES = {128: [(1, 4096, 32, 8, 128), (1, 32768, 32, 8, 128), (16, 4096, 32, 8, 128)], 64: SMOLLM2_SHAPES}
ONE_SPLIT_SHAPES = [(64, 4096, 32, 8, 128), (256, 2048, 32, 8, 128), (64, 16384, 32, 8, 128)]
TUNE_SHARE = 0.6  # of --budget-s, from the start of the run


def tune(kept: dict, deadline: float, int8_only: bool = False) -> dict:
    """Choose, by the geometric mean of CUDA-graph times over a few shapes, and install in the
    module: the INT8 conversion, each (dtype, head dim)'s tile config and split rule, where
    score_out's probabilities are made and the score pass's step. Returns the record (every
    candidate's time)."""
    mod = decode_config
    record = {"int8_convert": {}, "configs": {}, "splits": {}, "scores_in_split": {}, "score_programs_per_sm": {},
              "score_block": {}}

    def score(name, shapes):
        times = [gpu_ms(decode_fns(s, kept[s])[name]) for s in shapes if s in kept]
        return math.exp(sum(math.log(t) for t in times) / len(times)) if times else math.inf

    def pick(what, candidates, apply, name, shapes):
        """Time each candidate (the current one first) until the deadline; install the fastest,
        unless it beats the current one by under 1% (noise)."""
        results = []
        for c in candidates:
            if time.time() > deadline:
                break
            apply(c)
            try:
                t = score(name, shapes)
                if math.isfinite(t):
                    results.append((t, c))
            except Exception as e:  # a candidate that does not compile or fit is just not chosen
                what[f"{c} error"] = repr(e)[:200]
        best = min(results)[1] if results else candidates[0]
        if results and results[0][1] == candidates[0] and min(results)[0] > 0.99 * results[0][0]:
            best = candidates[0]
        apply(best)
        what.update({"chosen": best, "geomean_ms": {str(c): t for t, c in results}})

    def set_config(key, **fields):
        mod.CONFIGS[key] = dataclasses.replace(mod.CONFIGS[key], **fields)

    def tile_step(size, d):
        cfg = mod.CONFIGS[(size, d)]
        current = (cfg.block_n, cfg.num_warps, cfg.num_stages, cfg.row_sums)
        cands = [current] + [c for c in TUNE_CONFIGS[(size, d)] if c != current]
        record["configs"][f"{size}B/D{d}"] = rec = {}
        pick(rec, cands, lambda c: set_config((size, d), block_n=c[0], num_warps=c[1], num_stages=c[2], row_sums=c[3]),
             "ours_fp16" if size == 2 else "ours_int8", TUNE_SHAPES[d])

    def split_step(size, d):
        cfg = mod.CONFIGS[(size, d)]
        current = (cfg.programs_per_sm, cfg.min_split_tiles)
        record["splits"][f"{size}B/D{d}"] = rec = {}
        pick(rec, [current] + [c for c in TUNE_SPLITS if c != current],
             lambda c: set_config((size, d), programs_per_sm=c[0], min_split_tiles=c[1]),
             "ours_fp16" if size == 2 else "ours_int8", SPLIT_SHAPES[d])

    # 1. INT8 conversion (the modes that passed the GPU check), 2. INT8 D128 tiles, 3. where
    # score_out's probabilities are made, 4. D64 fp16 tiles and split rule, 5. the split rule of
    # the small-batch shapes, 6. the rest.
    modes = [m for m in (mod.INT8_CONVERT,) + TUNE_INT8_MODES if INT8_MODES_OK.get(m)]
    modes = list(dict.fromkeys(modes))
    pick(record["int8_convert"], modes or [mod.INT8_CONVERT], lambda m: setattr(mod, "INT8_CONVERT", m),
         "ours_int8", TUNE_SHAPES[128])
    tile_step(1, 128)
    if int8_only:
        tile_step(1, 64)
        return record
    pick(record["scores_in_split"], [mod.SCORES_IN_SPLIT, not mod.SCORES_IN_SPLIT],
         lambda v: setattr(mod, "SCORES_IN_SPLIT", v), "ours_fp16_scores", ONE_SPLIT_SHAPES)
    tile_step(2, 64)
    split_step(2, 64)
    split_step(2, 128)
    split_step(1, 128)
    tile_step(2, 128)
    tile_step(1, 64)
    split_step(1, 64)
    with _setting(mod, "SCORES_IN_SPLIT", False):  # stage 2's chunks: the split shapes, and one split
        pick(record["score_programs_per_sm"], [mod.SCORE_PROGRAMS_PER_SM] + [
            p for p in TUNE_SCORE_PROGRAMS if p != mod.SCORE_PROGRAMS_PER_SM],
            lambda p: setattr(mod, "SCORE_PROGRAMS_PER_SM", p), "ours_fp16_scores",
            SPLIT_SHAPES[128][1:] + ONE_SPLIT_SHAPES[:1])
    # tokens per step of the score pass (both paths): more bytes in flight a thread, fewer steps
    pick(record["score_block"], [mod.SCORE_BLOCK] + [b for b in TUNE_SCORE_BLOCKS if b != mod.SCORE_BLOCK],
         lambda b: setattr(mod, "SCORE_BLOCK", b), "ours_fp16_scores",
         SPLIT_SHAPES[128][1:] + ONE_SPLIT_SHAPES[:1] + SPLIT_SHAPES[64])
    return record


def tuned_defaults_patch(mod, device: str) -> str:
    """The module-level defaults the run installed, as lines to paste into kernels/decode_config.py."""
    configs = ", ".join(f"({k[0]}, {k[1]}): DecodeConfig{tuple(vars(v).values())}" for k, v in mod.CONFIGS.items())
    return "\n".join([f"# kernels/decode_config.py, tuned by bench/kernels.py on {device}:",
                      f"CONFIGS = {{{configs}}}",
                      f"INT8_CONVERT = {mod.INT8_CONVERT!r}",
                      f"SCORES_IN_SPLIT = {mod.SCORES_IN_SPLIT}",
                      f"SCORE_PROGRAMS_PER_SM = {mod.SCORE_PROGRAMS_PER_SM}",
                      f"SCORE_BLOCK = {mod.SCORE_BLOCK}"])


def host_overhead_us(inp, shape) -> dict:
    """Host time of one call (launch path only), ours vs SDPA, on a small shape."""
    out = {}
    for name, fns in decode_fns(shape, inp).items():
        if name in ("ours_fp16", "ours_fp16_scores", "sdpa_contiguous"):
            fns[0]()
            torch.cuda.synchronize() if not SMOKE else None
            start = time.perf_counter()
            for _ in range(200):
                fns[0]()
            out[name] = (time.perf_counter() - start) / 200 * 1e6
            torch.cuda.synchronize() if not SMOKE else None
    return out


def flex_decode(shape, inputs, flex_compiled) -> float:
    """FlexAttention on the same bytes viewed as 128-slot pages, one block-mask row per sequence."""
    from torch.nn.attention.flex_attention import BlockMask

    batch, length, hq, hkv, d = shape
    k = inputs["k"].view(-1, FLEX_PAGE, hkv, d)  # same memory, bigger pages
    v = inputs["v"].view(-1, FLEX_PAGE, hkv, d)
    n_pages, n_seq_pages = k.shape[0], length // FLEX_PAGE
    gen = torch.Generator(device=DEV).manual_seed(1)
    table = torch.randperm(n_pages, device=DEV, generator=gen)[: batch * n_seq_pages].view(batch, -1).int()
    owner = torch.full((n_pages,), -1, dtype=torch.int32, device=DEV)
    logical = torch.zeros(n_pages, dtype=torch.int32, device=DEV)
    owner[table.long()] = torch.arange(batch, device=DEV, dtype=torch.int32)[:, None].expand_as(table)
    logical[table.long()] = torch.arange(n_seq_pages, device=DEV, dtype=torch.int32)[None].expand_as(table)
    seq_lens = torch.full((batch,), length, dtype=torch.int32, device=DEV)

    def mask_mod(b, h, q_idx, kv_idx):
        page = kv_idx // FLEX_PAGE
        return (owner[page] == b) & (logical[page] * FLEX_PAGE + kv_idx % FLEX_PAGE < seq_lens[b])

    idx = torch.zeros(batch, 1, 1, n_pages, dtype=torch.int32, device=DEV)
    idx[:, 0, 0, :n_seq_pages] = table
    none = torch.zeros(batch, 1, 1, dtype=torch.int32, device=DEV)
    full = torch.full((batch, 1, 1), n_seq_pages, dtype=torch.int32, device=DEV)
    mask = BlockMask.from_kv_blocks(none, torch.zeros_like(idx), full, idx, BLOCK_SIZE=(FLEX_PAGE, FLEX_PAGE),
                                    mask_mod=mask_mod, seq_lengths=(1, n_pages * FLEX_PAGE))
    kp = k.view(1, -1, hkv, d).transpose(1, 2)  # [1, Hkv, pages * 128, D]
    vp = v.view(1, -1, hkv, d).transpose(1, 2)
    q4 = inputs["q"][:, :, None]
    fn = lambda: flex_compiled(q4, kp, vp, block_mask=mask, scale=d ** -0.5, enable_gqa=True)  # noqa: E731
    out = fn()[:, :, 0]
    expected = ref.paged_decode_attention_ref(q4[:1, :, 0].float(), k, v, table[:1], seq_lens[:1], d ** -0.5)
    assert rel_err(out[:1], expected) < 1e-2, "flex output differs from the reference"
    return ms(fn)


# ---------------------------------------------------------------- 4. prefill
def prefill_timings(gen) -> list[dict]:
    rows = []
    for batch, new, prefix, hq, hkv, d in PREFILL_SHAPES:
        lens = [new + prefix] * batch
        k, v, _, tables, seq_lens = paged(batch, lens, hkv, d, PAGE, torch.float16, gen)
        q = torch.randn(batch * new, hq, d, device=DEV, generator=gen, dtype=torch.float16)
        cu = torch.arange(0, batch + 1, device=DEV, dtype=torch.int32) * new
        args = (k, v, tables, cu, seq_lens, d ** -0.5)
        tri = triton_module("prefill_attention", BACKEND).paged_prefill_attention
        scores = torch.zeros(batch, hkv, tables.shape[1] * PAGE, device=DEV)
        rows.append({"B": batch, "new": new, "prefix": prefix, "Hq": hq, "Hkv": hkv, "D": d,
                     "triton_ms": ms(lambda: tri(q, *args, max_query_len=new)),
                     "gather_sdpa_ms": ms(lambda: ref.paged_prefill_attention_sdpa(q, *args)),
                     # what H2O's steps with prefill add: the score kernel's two launches, and the
                     # torch reference scorer it replaced (a loop over the chunks)
                     "scores_triton_ms": ms(lambda: kernels.paged_prefill_scores(q, *args, scores, max_query_len=new)),
                     "scores_reference_ms": ms(lambda: paged_prefill_scores_ref(q, *args, scores))})
    return rows


# ---------------------------------------------------------------- floors, table, main
def judge(r: dict, copy_gbs: float) -> None:
    """Ratios and floors of issue 4, from the eager (do_bench) times and from the CUDA-graph times."""
    b, length = r["shape"]["B"], r["shape"]["L"]
    large = b * length >= LARGE_TOKENS
    r["floor_ms"] = r["bytes_fp16"] / copy_gbs / 1e6
    sdpa_bound = 1.05 if large else {32768: 0.85, 4096: 0.5}.get(length) if b == 1 else None
    for suffix in ("", "_gpu"):
        t = {k: r.get(f"{k}{suffix}_ms") for k in ("ours_fp16", "ours_int8", "ours_fp16_scores", "sdpa_contiguous")}
        if None in t.values():
            continue
        f = t["ours_fp16"]
        x = {"fp16_vs_sdpa": f / t["sdpa_contiguous"], "int8_vs_fp16": t["ours_int8"] / f,
             "scores_vs_plain": t["ours_fp16_scores"] / f,
             "bandwidth_vs_copy": r["bytes_fp16"] / f / 1e6 / copy_gbs}
        floors = {"scores_vs_plain<=1.15": x["scores_vs_plain"] <= 1.15}
        if suffix == "":
            x["fp16_vs_gather_sdpa"] = f / r["gather_sdpa_ms"]
            floors["fp16_vs_gather_sdpa<=0.33"] = x["fp16_vs_gather_sdpa"] <= 0.33
            if r.get("flex_ms"):
                x["fp16_vs_flex"] = f / r["flex_ms"]
        if sdpa_bound:
            floors[f"fp16_vs_sdpa<={sdpa_bound}"] = x["fp16_vs_sdpa"] <= sdpa_bound
        if large:
            floors["bandwidth>=0.85*copy"] = x["bandwidth_vs_copy"] >= 0.85
            floors["int8_vs_fp16<=0.6"] = x["int8_vs_fp16"] <= 0.6
        r[f"ratios{suffix}"], r[f"floors{suffix}"] = x, floors


def table(result: dict) -> str:
    us = lambda r, key: f"{r[key] * 1e3:8.1f}" if r.get(key) else f"{'-':>8}"  # noqa: E731
    lines = [f"{result['device']}  copy {result['copy']['gb_per_s']:.0f} GB/s; times in us (medians)"]
    for suffix, title in (("", "eager: triton.testing.do_bench, L2 flushed before each call, host launch cost partly inside"),
                          ("_gpu", "GPU time: CUDA graph replays over input copies that overflow the L2, no host cost")):
        lines.append(title)
        lines.append(f"{'B':>4} {'L':>6} {'Hq':>3} {'Hkv':>3} {'D':>4} | {'fp16':>8} {'int8':>8} {'+score':>8} {'sdpa':>8} "
                     f"{'gath+sd':>8} {'flex':>8} {'floor':>8} | {'/sdpa':>5} {'/gath':>5} {'i8/16':>5} {'sc/16':>5} "
                     f"{'bw%':>4}  failed floors")
        for r in result["decode"]:
            if f"ratios{suffix}" not in r:
                lines.append(f"{r['shape']}: {r.get('error')}")
                continue
            s, x = r["shape"], r[f"ratios{suffix}"]
            failed = ",".join(k for k, ok in r[f"floors{suffix}"].items() if not ok) or "-"
            extra = (us(r, "gather_sdpa_ms"), us(r, "flex_ms")) if suffix == "" else (f"{'':>8}", f"{'':>8}")
            gath = f"{x['fp16_vs_gather_sdpa']:5.2f}" if "fp16_vs_gather_sdpa" in x else f"{'':>5}"
            lines.append(f"{s['B']:>4} {s['L']:>6} {s['Hq']:>3} {s['Hkv']:>3} {s['D']:>4} | {us(r, f'ours_fp16{suffix}_ms')} "
                         f"{us(r, f'ours_int8{suffix}_ms')} {us(r, f'ours_fp16_scores{suffix}_ms')} "
                         f"{us(r, f'sdpa_contiguous{suffix}_ms')} {extra[0]} {extra[1]} {us(r, 'floor_ms')} | "
                         f"{x['fp16_vs_sdpa']:5.2f} {gath} {x['int8_vs_fp16']:5.2f} {x['scores_vs_plain']:5.2f} "
                         f"{100 * x['bandwidth_vs_copy']:4.0f}  {failed}")
    for r in result["decode"]:
        alt = {k[:-7]: f"{r[k] * 1e3:.1f}" for k in (
            "ours_int8_gpu_ms", *(f"ours_int8_{m}_gpu_ms" for m in TUNE_INT8_MODES), "ours_fp16_gpu_ms",
            "ours_fp16_multisplit_gpu_ms", "ours_fp16_scores_gpu_ms", "ours_fp16_scores_stage2_gpu_ms",
            "ours_fp16_scores_in_split_gpu_ms", "ours_fp16_scores_multisplit_gpu_ms") if r.get(k)}
        lines.append(f"alternatives (GPU us) {tuple(r['shape'].values())} splits {r.get('num_splits')}: {alt}")
    for p in result.get("prefill", []):
        lines.append(f"prefill B{p['B']} new{p['new']} prefix{p['prefix']}: triton {p['triton_ms'] * 1e3:.1f} us, "
                     f"gather+sdpa {p['gather_sdpa_ms'] * 1e3:.1f} us"
                     + (f"; scores triton {p['scores_triton_ms'] * 1e3:.1f} us, torch reference "
                        f"{p['scores_reference_ms'] * 1e3:.1f} us" if "scores_triton_ms" in p else ""))
    if result.get("tuning"):
        t = result["tuning"]
        for key, what in t.items():
            if not isinstance(what, dict):
                continue
            picks = [(f"{key} {k}", v) for k, v in what.items() if isinstance(v, dict) and "geomean_ms" in v]
            for k, v in picks or ([(key, what)] if "geomean_ms" in what else []):
                times = ", ".join(f"{c} {ms_ * 1e3:.1f}" for c, ms_ in v["geomean_ms"].items())
                lines.append(f"tuned {k}: {v['chosen']}  (geomean us: {times})")
        if t.get("reverted"):
            lines.append(f"TUNING REVERTED: {t['reverted']}")
    lines.append(f"host us/call: {result.get('host_us')}")
    modes = {m: all(c["pass"] for c in rows) for m, rows in result.get("correctness_int8_modes", {}).items()}
    checks = result["correctness"] + result.get("correctness_after_tuning", [])
    bad = [c["check"] for c in checks if not c["pass"]]
    lines.append(f"correctness (incl. after tuning): {len(checks) - len(bad)}/{len(checks)} pass" +
                 (f"; FAILED: {bad}" if bad else "") + f"; INT8 conversions passed: {modes}; "
                 f"ran {result.get('defaults', {}).get('int8_convert')}")
    return "\n".join(lines)


def _smoke_settings() -> None:
    global DEV, BACKEND, SMOKE, SHAPES, TUNE_SHAPES, LARGE_TOKENS, CHECK_LENS, CHECK_PREFILL, PREFILL_SHAPES
    global SPLIT_SHAPES, ONE_SPLIT_SHAPES, TUNE_CONFIGS, TUNE_SPLITS, TUNE_SCORE_PROGRAMS, TUNE_SCORE_BLOCKS
    DEV, BACKEND, SMOKE = torch.device("cpu"), "interpret", True
    SHAPES = [(1, 256, 8, 2, 64), (2, 128, 9, 3, 64)]
    TUNE_SHAPES = {128: [], 64: [(2, 128, 9, 3, 64)]}
    SPLIT_SHAPES = {128: [], 64: [(1, 256, 8, 2, 64)]}
    ONE_SPLIT_SHAPES = [(2, 128, 9, 3, 64)]
    TUNE_CONFIGS = {k: v[:2] for k, v in TUNE_CONFIGS.items()}  # the interpreter ignores warps and stages
    TUNE_SPLITS, TUNE_SCORE_PROGRAMS, TUNE_SCORE_BLOCKS = TUNE_SPLITS[:2], TUNE_SCORE_PROGRAMS[:2], TUNE_SCORE_BLOCKS[:2]
    LARGE_TOKENS = 256
    CHECK_LENS = [1, 17, 70, 0]
    CHECK_PREFILL = ([20, 6, 1], [20, 50, 9])
    PREFILL_SHAPES = [(2, 16, 32, 8, 2, 64)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "bench/results")
    parser.add_argument("--budget-s", type=float, default=240.0,
                        help=f"tuning stops at {TUNE_SHARE * 100:.0f}%% of this (s since start), Flex at all of it")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, Triton interpreted")
    parser.add_argument("--skip", default="", help="comma-separated optional stages to skip: tune,prefill,flex")
    parser.add_argument("--tune-int8-only", action="store_true", help="tune only the INT8 conversion and tiles")
    args = parser.parse_args()
    if args.smoke:
        _smoke_settings()
    start = time.time()
    skip = set(args.skip.split(","))
    name = torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu (smoke test)"
    gpu = next((g for g in ("h100", "h200", "a100", "l40s") if g in name.lower()), "cpu" if SMOKE else "gpu")
    path = os.path.join(args.out, f"kernels_{gpu}.json")
    os.makedirs(args.out, exist_ok=True)
    triton_module("decode_attention", BACKEND)  # fails here, not later, if the interpreter cannot run
    mod = decode_config
    result = {"device": name, "sm_count": num_sms(DEV), "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
              "python": platform.python_version(), "page_size": PAGE, "flex_page_size": FLEX_PAGE,
              "timing": {"eager": "triton.testing.do_bench median (warmup 10 ms, rep 60 ms), L2 flushed before each call",
                         "gpu": "CUDA graph of >= 8 calls rotating over input copies >= 200 MB, median of 7 replays"},
              "decode": [], "prefill": []}

    def save(stage):
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
        print(f"[{time.time() - start:6.1f} s] {stage} -> {path}", flush=True)

    # INT8 decode with each conversion (the PTX ones exist only on the GPU): those that pass are
    # the tuning's candidates; the JSON keeps every mode's checks. Then everything else.
    asked = mod.INT8_CONVERT
    result["correctness_int8_modes"] = {}
    for mode in dict.fromkeys((asked,) + TUNE_INT8_MODES):
        with _setting(mod, "INT8_CONVERT", mode):  # (the one-split path without score_out: after tuning)
            rows = check_correctness(decode_only=True, names=("int8",), plain_one_split=False)
        result["correctness_int8_modes"][mode] = rows
        INT8_MODES_OK[mode] = all(c["pass"] for c in rows)
    if not INT8_MODES_OK[asked]:
        mod.INT8_CONVERT = next((m for m in TUNE_INT8_MODES if INT8_MODES_OK[m]), "i2f")
    result["correctness"] = check_correctness(names=("fp16", "bf16", "fp8"))
    save("correctness")
    result["copy"] = copy_bandwidth(DEV)  # a 1 GiB copy, as every bench measures it
    gen = torch.Generator(device=DEV).manual_seed(2)
    kept = {shape: decode_inputs(shape, gen) for shape in SHAPES}
    save("inputs")
    if "tune" not in skip:
        before = (dict(mod.CONFIGS), mod.INT8_CONVERT, mod.SCORES_IN_SPLIT, mod.SCORE_PROGRAMS_PER_SM, mod.SCORE_BLOCK)
        result["tuning"] = tune(kept, start + TUNE_SHARE * args.budget_s, args.tune_int8_only)
        save("tuning")
        names = ("int8",) if args.tune_int8_only else ("fp16", "bf16", "int8", "fp8")
        result["correctness_after_tuning"] = check_correctness(decode_only=True, names=names)
        if not all(c["pass"] for c in result["correctness_after_tuning"]):  # keep what passed before
            mod.CONFIGS, mod.INT8_CONVERT, mod.SCORES_IN_SPLIT, mod.SCORE_PROGRAMS_PER_SM, mod.SCORE_BLOCK = before
            result["tuning"]["reverted"] = "a check failed with the tuned settings; the defaults ran"
        save("correctness after tuning")
    result["defaults"] = {"configs": {f"{k[0]}B/D{k[1]}": vars(v) for k, v in mod.CONFIGS.items()},
                          "int8_convert": mod.INT8_CONVERT, "scores_in_split": mod.SCORES_IN_SPLIT,
                          "score_programs_per_sm": mod.SCORE_PROGRAMS_PER_SM, "score_block": mod.SCORE_BLOCK,
                          "patch": tuned_defaults_patch(mod, name)}
    for shape in SHAPES:
        try:
            r = decode_shape(shape, kept[shape])
            judge(r, result["copy"]["gb_per_s"])
        except Exception as e:  # record and go on: one shape must not cost the run
            r = {"shape": dict(zip(["B", "L", "Hq", "Hkv", "D"], shape)), "error": repr(e)[:500]}
        result["decode"].append(r)
        save(f"decode {shape}")
    result["host_us"] = {k: round(v, 1) for k, v in host_overhead_us(kept[SHAPES[0]], SHAPES[0]).items()}
    if "prefill" not in skip:
        try:
            result["prefill"] = prefill_timings(gen)
        except Exception as e:
            result["prefill_error"] = repr(e)[:500]
        save("prefill")
    from torch.nn.attention.flex_attention import flex_attention

    flex_compiled = flex_attention if SMOKE else torch.compile(flex_attention, dynamic=False)
    for r, shape in zip(result["decode"], SHAPES):
        if "flex" in skip or "error" in r or time.time() > start + args.budget_s:
            continue
        try:
            r["flex_ms"] = flex_decode(shape, kept[shape], flex_compiled)
            judge(r, result["copy"]["gb_per_s"])
        except Exception as e:
            r["flex_error"] = repr(e)[:300]
        save(f"flex {shape}")
    kept.clear()
    print(table(result))
    print(result["defaults"]["patch"])


if __name__ == "__main__":
    main()
