"""Where an eager step's time goes: host launch time vs GPU busy time, per step and per op.

Compute mode times a step with CUDA events around it, so an eager step whose host launches
take longer than its kernels is measured at its launch time. This bench shows, for whole
steps of several compositions (SmolLM2 shape, seeded random weights): the host time to launch
the step (perf_counter until ModelRunner.run returns, no sync), the CUDA-event time as compute
mode measures it, and the GPU busy time (sum of kernel durations from torch.profiler); then
the host cost of one call of each op wrapper (calls back to back on tiny inputs, so the GPU
never holds the host back). Prints tables and writes $OUT/step_overhead_<gpu>.json (or --out).

    python -m bench.step_overhead [--model smollm2-135m] [--reps 15] [--out PATH]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import kernels
from bench.common import environment, logit_agreement, random_weights_model, write_result
from engine.profile import StepBench
from kernels import fused

# (name, decode contexts, prefill chunks (cached, new)): what serving steps look like
COMPOSITIONS = [
    ("decode b64 ctx1024 (graph)", [1024] * 64, []),
    ("decode b64 ctx1024 (eager)", [1024] * 64, []),
    ("prefill 16", [], [(0, 16)]),
    ("prefill 512", [], [(0, 512)]),
    ("prefill 2048", [], [(0, 2048)]),
    ("prefill 3x300 after 1024", [], [(1024, 300)] * 3),
    ("mixed 128 decode + 256", [900] * 128, [(0, 256)]),
    ("mixed 200 decode + 2x400", [900] * 200, [(0, 400), (512, 400)]),
    ("mixed 200 decode + 2x400 (eager)", [900] * 200, [(0, 400), (512, 400)]),
    ("prefill 512 (eager)", [], [(0, 512)]),
    # the block table's width alone (rows at 128 tokens, tables padded as a long sequence pads them)
    ("decode b256 ctx128 width16", [128] * 256, [], 16),
    ("decode b256 ctx128 width512", [128] * 256, [], 512),
    ("mixed 200 decode ctx128 + 256 width16", [128] * 200, [(0, 256)], 16),
    ("mixed 200 decode ctx128 + 256 width512", [128] * 200, [(0, 256)], 512),
]
WIDTH_PAIRS = [("decode b256 ctx128 width16", "decode b256 ctx128 width512"),
               ("mixed 200 decode ctx128 + 256 width16", "mixed 200 decode ctx128 + 256 width512")]


def quantiles(xs: list[float]) -> dict:
    xs = sorted(xs)
    pick = lambda f: xs[min(len(xs) - 1, int(f * len(xs)))]
    return {"median": statistics.median(xs), "p10": pick(0.1), "p90": pick(0.9), "max": xs[-1]}


def step_batch(bench: StepBench, contexts: list[int], chunks: list[tuple[int, int]], width: int = 0):
    seq_lens = [c for c in contexts] + [cached + n for cached, n in chunks]
    new = [1] * len(contexts) + [n for _, n in chunks]
    return bench.inputs(seq_lens, new, width)


def time_step(bench: StepBench, batch, reps: int) -> dict:
    runner = bench.runner
    host, event, wall = [], [], []
    for i in range(reps + 2):
        torch.cuda.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        begin.record()
        logits = runner.run(batch)
        t1 = time.perf_counter()
        logits.argmax(-1).tolist()
        end.record()
        end.synchronize()
        t2 = time.perf_counter()
        if i >= 2:
            host.append((t1 - t0) * 1e3)
            event.append(begin.elapsed_time(end))
            wall.append((t2 - t0) * 1e3)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        runner.run(batch).argmax(-1).tolist()
        torch.cuda.synchronize()
    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events)
    kernels_launched = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx"))
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    top_gpu = sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[:12]
    return {"host_launch_ms": quantiles(host), "event_ms": quantiles(event), "wall_ms": quantiles(wall),
            "gpu_busy_ms": gpu_us / 1e3, "launches": kernels_launched,
            "top_cpu": [(e.key, e.count, round(e.self_cpu_time_total / 1e3, 3)) for e in top],
            "top_gpu": [(e.key, e.count, round(e.self_device_time_total / 1e3, 3)) for e in top_gpu]}


def graph_vs_eager(bench: StepBench, batch) -> dict:
    """The same step replayed from its CUDA graph and run eagerly (both write the same K/V)."""
    runner = bench.runner
    runner.use_cuda_graphs = False
    eager = runner.run(batch)
    runner.use_cuda_graphs = True
    graph = runner.run(batch)
    return {**dict(zip(("max_abs_logit_diff", "max_abs_logit", "argmax_agree"), logit_agreement(graph, eager))),
            "graph_shape": str(runner.graph_shape(batch))}


def time_ops(bench: StepBench, tokens: int, calls: int = 300) -> dict:
    """Host microseconds per call of each wrapper (back to back, tiny inputs)."""
    cfg, store, dev = bench.cfg, bench.store, bench.device
    x = bench.randn(tokens, cfg.hidden_size)
    res = bench.randn(tokens, cfg.hidden_size)
    w = torch.ones(cfg.hidden_size, dtype=x.dtype, device=dev)
    qkv = bench.randn(tokens, (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim)
    q = qkv[:, :cfg.num_heads * cfg.head_dim].view(tokens, cfg.num_heads, cfg.head_dim)
    k = qkv[:, cfg.num_heads * cfg.head_dim:(cfg.num_heads + cfg.num_kv_heads) * cfg.head_dim].view(
        tokens, cfg.num_kv_heads, cfg.head_dim)
    rope = bench.model.rope()
    pos = torch.arange(tokens, device=dev)
    slots = torch.arange(tokens, device=dev)
    gu = bench.randn(tokens, 2 * cfg.intermediate_size)
    wq = bench.randn(qkv.shape[1], cfg.hidden_size)
    kc, vc, scales = store.layer(0)
    bt, sl = bench.tensors([tokens])
    cu = torch.tensor([0, tokens], dtype=torch.int32, device=dev)
    qa = q.contiguous()
    ops = {
        "rms_norm+residual (triton)": lambda: fused.rms_norm(x, w, 1e-5, res),
        "rotary_ (triton)": lambda: fused.rotary_(q, k, rope.cos, rope.sin, pos),
        "silu_mul (triton)": lambda: fused.silu_mul(gu),
        "write_kv (triton)": lambda: store.write(0, k, k, slots),
        "prefill attention (triton)": lambda: kernels.paged_prefill_attention(qa, kc, vc, bt, cu, sl, 0.125,
                                                                              kv_scales=scales, max_query_len=tokens),
        "F.linear (cuBLAS)": lambda: F.linear(x, wq),
        "tensor.to(int32)": lambda: bt.to(torch.int64).to(torch.int32),
        "empty kernel: x.add_(0)": lambda: x.add_(0),
    }
    out = {}
    for name, fn in ops.items():
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        host = (time.perf_counter() - t0) / calls * 1e6
        torch.cuda.synchronize()
        out[name] = round(host, 1)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--kv-dtype", default="fp16")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    assert torch.cuda.is_available(), "bench/step_overhead.py times a GPU"
    _, loaded = random_weights_model(a.model, "cuda")
    bench = StepBench(loaded.model, a.kv_dtype, 16, want_blocks=40000)
    rows = {}
    for name, contexts, chunks, *width in COMPOSITIONS:
        bench.runner.use_cuda_graphs = "(eager)" not in name
        captures = bench.runner.captures
        batch = step_batch(bench, contexts, chunks, *width)
        rows[name] = time_step(bench, batch, a.reps)
        r = rows[name]
        if "(eager)" not in name:
            r["graph_vs_eager"] = check = graph_vs_eager(bench, batch)
            print(f"  graph vs eager: max |dlogit| {check['max_abs_logit_diff']:.4f} of {check['max_abs_logit']:.2f},"
                  f" argmax agree {check['argmax_agree']:.3f}, {check['graph_shape']}")
        print(f"{name:32s} host {r['host_launch_ms']['median']:7.2f} ms  event {r['event_ms']['median']:7.2f} "
              f"(p10 {r['event_ms']['p10']:6.2f} p90 {r['event_ms']['p90']:6.2f})  gpu busy {r['gpu_busy_ms']:6.2f}"
              f"  launches {r['launches']}  graphs captured {bench.runner.captures - captures}", flush=True)
    bench.runner.use_cuda_graphs = True
    for name in ("mixed 200 decode + 2x400 (eager)", "mixed 200 decode + 2x400"):
        print(f"\ntop CPU self time, {name}:")
        for key, count, ms in rows[name]["top_cpu"]:
            print(f"  {key[:60]:60s} x{count:5d} {ms:8.3f} ms")
    for pair in WIDTH_PAIRS:  # where a wide table's time goes: host or GPU, and which kernels
        print(f"\n{pair[0]} -> width512: event {rows[pair[0]]['event_ms']['median']:.2f} -> "
              f"{rows[pair[1]]['event_ms']['median']:.2f} ms, host {rows[pair[0]]['host_launch_ms']['median']:.2f} -> "
              f"{rows[pair[1]]['host_launch_ms']['median']:.2f}, gpu busy {rows[pair[0]]['gpu_busy_ms']:.2f} -> "
              f"{rows[pair[1]]['gpu_busy_ms']:.2f}")
        for name in pair:
            print(f"  top GPU self time, {name}: " + "; ".join(f"{k[:48]} x{c} {ms:.3f} ms"
                                                               for k, c, ms in rows[name]["top_gpu"][:6]))
            print(f"  top CPU self time, {name}: " + "; ".join(f"{k[:48]} x{c} {ms:.3f} ms"
                                                               for k, c, ms in rows[name]["top_cpu"][:6]))
    ops = time_ops(bench, 256)
    print("\nhost us per call (256 tokens):")
    for k, v in ops.items():
        print(f"  {k:34s} {v:7.1f}")
    result = {"benchmark": "step_overhead", **environment(), "model": a.model, "kv_dtype": a.kv_dtype,
              "weights": "random", "reps": a.reps, "steps": rows, "op_host_us": ops}
    write_result(a.out, "step_overhead_h100.json", result)
    return result


if __name__ == "__main__":
    main()
