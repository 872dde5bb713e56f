"""bench/decode_order.py on the CPU: the same lengths with the long sequence moved, every place
timed, and the JSON it writes. A smoke test of the script, not a timing."""

from __future__ import annotations

import json

from bench import decode_order


def test_placed_moves_only_the_long_sequence():
    seq_lens = decode_order.contexts(6, 640, 40, seed=3)
    assert seq_lens[0] == 640 and len(seq_lens) == 6 and max(seq_lens[1:]) < 640
    for where, at in (("first", 0), ("middle", 2), ("last", 5)):
        moved = decode_order.placed(seq_lens, where)
        assert moved.index(640) == at and sorted(moved) == sorted(seq_lens)


def test_smoke_run_writes_a_row_per_batch(tmp_path):
    out = tmp_path / "order.json"
    decode_order.main(["--device", "cpu", "--batches", "2,3", "--long", "48", "--short", "16", "--reps", "1",
                       "--kv-dtype", "fp32", "--pool-gib", "0.01", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["benchmark"] == "decode_order" and [r["rows"] for r in result["rows"]] == [2, 3]
    for r in result["rows"]:
        assert all(r[f"{p}_s"] > 0 for p in (*decode_order.PLACES, "scattered")) and r["model_s"] > 0
    assert result["store_blocks"] > sum(-(-n // 16) for n in decode_order.contexts(3, 48, 16, seed=3))


def test_scattered_pool_gives_each_row_distinct_blocks():
    import torch
    from engine.loader import load_model
    from engine.profile import StepBench
    model = load_model("smollm2-135m", device=torch.device("cpu"), dtype=torch.float32, random_weights=True).model
    bench = StepBench(model, "fp32", 16, want_blocks=64)
    pool = bench.scattered(seed=5)
    assert sorted(pool) == list(range(bench.num_blocks)) and pool != sorted(pool)
    batch = bench.inputs([40, 17, 33], [1, 1, 1], pool=pool)
    tables = [s.block_table for s in batch]
    assert tables == [pool[0:3], pool[3:5], pool[5:8]]
    assert batch[1].slots == [pool[4] * 16 + 0]  # position 16 lives in the row's second block


def test_scatter_takes_inputs_blocks_from_the_first_gib_in_seeded_order():
    """kvsim profile --scatter-gib: every step's tables come from the first that many GiB of the
    store's blocks in a seeded random order (the rest after them, in order); 0 puts them back in order."""
    import torch
    from engine.loader import load_model
    from engine.profile import StepBench
    from kvcache.sizing import kv_bytes_per_block
    model = load_model("smollm2-135m", device=torch.device("cpu"), dtype=torch.float32, random_weights=True).model
    bench = StepBench(model, "int8", 16, want_blocks=64)
    per_block = kv_bytes_per_block(model.config, "int8", 16)
    bench.scatter(20 * per_block / 2**30, seed=3)
    assert sorted(bench.pool[:20]) == list(range(20)) and bench.pool[:20] != list(range(20))
    assert bench.pool[20:] == list(range(20, bench.num_blocks))
    tables = [s.block_table for s in bench.inputs([40, 17], [1, 1])]
    assert tables == [bench.pool[0:3], bench.pool[3:5]]
    again = StepBench(model, "int8", 16, want_blocks=64)
    again.scatter(20 * per_block / 2**30, seed=3)
    assert again.pool == bench.pool
    bench.scatter(0)
    assert [s.block_table for s in bench.inputs([40, 17], [1, 1])] == [[0, 1, 2], [3, 4]]
