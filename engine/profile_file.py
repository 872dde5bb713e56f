"""The profile file that `kvsim profile` writes and the calibrated cost model reads (JSON).

    {"format": "kvsim-profile", "version": 1,
     "gpu": "h100",                       # the GPU preset it is for (engine.gpus)
     "device_name": "NVIDIA H100 80GB HBM3", "timer": "cuda_events" | "perf_counter",
     "date": ISO 8601, "versions": {"kvsim", "torch", "triton", "cuda", "python"},
     "model": {"name", "hidden_size", "intermediate_size", "num_layers", "num_heads",
               "num_kv_heads", "head_dim", "vocab_size"},
     "block_size": 16,
     "settings": {"warmup", "reps", "quick", "budget_s", "elapsed_s", "skipped", "errors"},
     "memory": {"copy_bytes_per_s", "host_to_device_bytes_per_s", "device_to_host_bytes_per_s"},
     "kv_dtypes": {"fp16": {"model_dtype": "float16", "kv_bytes_per_token": int,
                            "tables": {NAME: {COLUMN: [numbers], ...}, ...}}, ...}}

Each table is columns of equal length, one entry per measured point, times in seconds (median
of `reps` after `warmup`). Whole steps are timed as compute mode times them (runner + sampling);
ops per layer. TABLES lists every table and its columns; a profile cut short by its time budget
lacks some, and a KV dtype without the REQUIRED ones is not calibrated (the roofline is used).
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from engine.buckets import SCORED_SPLIT_MIN_CONTEXT, bucket, width_bucket
from engine.config import ModelConfig
from engine.cost_model import StepShape, causal_pairs
from engine.errors import ConfigError

FORMAT, VERSION = "kvsim-profile", 1
SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                "vocab_size")
TABLES = {  # name -> columns (the last one is the time)
    "decode_step": ("batch", "context", "time_s"),  # whole decode step, every sequence at `context`
    "prefill_step": ("tokens", "cached", "time_s"),  # whole step: one chunk of `tokens` after `cached`
    "mixed_step": ("tokens", "cached", "batch", "context", "time_s"),  # a chunk + a decode batch (checks only:
    # the cost model read its median extra until 2026-12-06; one eager point made it 0.6 ms)
    "prefill_attention": ("tokens", "cached", "time_s"),  # prefill kernel, one layer
    "prefill_decode_rows": ("batch", "context", "time_s"),  # (profiles before 2026-11-23 (3); unused)
    "decode_attention": ("batch", "context", "time_s"),  # decode kernel, one layer
    "decode_attention_skew": ("batch", "context", "time_s"),  # one sequence at `context`, the rest 1 block
    "lm_head_sample": ("rows", "time_s"),  # final norm + LM head + sampling
    "write_kv": ("tokens", "time_s"),  # cache write, one layer
    "linear": ("tokens", "time_s"),  # the GEMMs of one layer (QKV, O, gate-up, down)
    "decode_overhead": ("batch", "context", "time_s"),  # a decode step minus the sum of its ops
    "table_width": ("chunk_tokens", "batch", "width_blocks", "time_s"),  # whole step, block tables padded to
    # width_blocks, rows at the shortest grid context: chunk_tokens 0 a decode step, else one chunk (no cache) too
    "random_steps": ("batch", "batch_bucket", "width_blocks", "context_sum", "context_max", "chunks",  # whole
                     "chunk_tokens", "chunk_cached", "causal_pairs",  # steps of seeded random compositions
                     *(f"chunk{i}_{c}" for i in range(1, 7) for c in ("tokens", "cached")), "time_s"),
}
TABLES["scored_steps"] = TABLES["random_steps"]  # the same, keeping attention scores (H2O, TOVA, SnapKV)
# the steps of a short trace slice served in compute mode, full and H2O (kvsim/profile_serving.py)
TABLES["serving_steps"] = TABLES["serving_scored_steps"] = TABLES["random_steps"]
TABLE_WIDTH_PADDING = "last"  # table_width pads one row's table (StepBench.inputs); older profiles padded every row
# where a scored step with prefill runs its one-token rows (settings.scored_decode_rows): the decode kernel
# and its score pass where one is long (engine/buckets.scored_split), else the prefill kernels; profiles
# before it ran them in the prefill kernels however long (and one of 2026-12-06 11:40 in the decode kernel
# however short: "decode kernel")
SCORED_DECODE_ROWS = f"decode kernel from {SCORED_SPLIT_MIN_CONTEXT} tokens, else prefill kernels"
GRID_AXES = {  # grid tables: (the row axis, the axis a row's points run along)
    "decode_step": ("batch", "context"), "decode_attention": ("batch", "context"),
    "decode_attention_skew": ("batch", "context"), "prefill_step": ("cached", "tokens"),
    "prefill_attention": ("cached", "tokens")}
SPIKE = 1.25  # a grid point this many times both its neighbours along its row is a spike (spikes())
DERIVED = ("decode_overhead",)  # differences of measurements: noise can make them negative
REQUIRED = ("decode_step", "prefill_step", "prefill_attention", "decode_attention", "lm_head_sample")
MAX_CHUNKS = 6  # prefill chunks a random_steps row records (chunk1_tokens, chunk1_cached, ...)
PROFILES_ENV = "KVSIM_PROFILES"  # files or folders (os.pathsep-separated) searched before the shipped ones


def spikes(table: dict, row: str, col: str) -> list[int]:
    """Indices of the points of a grid table that exceed both their neighbours along `col` (at the
    same `row`) by more than SPIKE times: a time that more work does not explain (the machine was
    busy for the reps of one point). The profiler measures them again; the cost model leaves out
    any left (and says so)."""
    by_row: dict = {}
    for i, (r, x) in enumerate(zip(table[row], table[col])):
        by_row.setdefault(r, []).append((x, i))
    out, t = [], table["time_s"]
    for points in by_row.values():
        points.sort()
        for (_, a), (_, i), (_, b) in zip(points, points[1:], points[2:]):
            if t[i] > SPIKE * max(t[a], t[b]):
                out.append(i)
    return sorted(out)


def padded(batch: int, context_max: int, block_size: int, buckets=(), min_width_blocks: int = 1) -> tuple[int, int]:
    """(rows, table width in blocks) a decode step's CUDA graph is captured for: the batch padded to
    the first bucket >= it (itself past the last), the longest table to a power of two."""
    return bucket(batch, buckets) or batch, width_bucket(-(-context_max // block_size), min_width_blocks)


def step_row(shape: StepShape, block_size: int, buckets=(), min_width_blocks: int = 1) -> tuple:
    """A random_steps row (all columns but time_s) of a step of at most MAX_CHUNKS chunks."""
    chunks, b = shape.prefill_chunks, shape.num_decode_seqs
    assert len(chunks) <= MAX_CHUNKS, f"{len(chunks)} chunks; a random_steps row holds {MAX_CHUNKS}"
    rows, width = padded(b, shape.decode_max_context, block_size, () if chunks else buckets, min_width_blocks)
    per_chunk = [v for n_s in (*((n, s) for s, n in chunks), *[(0, 0)] * (MAX_CHUNKS - len(chunks))) for v in n_s]
    return (b, rows + len(chunks), width, shape.decode_context_tokens, shape.decode_max_context, len(chunks),
            sum(n for _, n in chunks), sum(s for s, _ in chunks), shape.prefill_attn_pairs, *per_chunk)


def row_shape(row: dict, scored: bool = False) -> StepShape:
    """The StepShape of a random_steps (or scored_steps) row ({column: value})."""
    chunks = tuple((int(row[f"chunk{i}_cached"]), int(row[f"chunk{i}_tokens"])) for i in range(1, MAX_CHUNKS + 1)
                   if row[f"chunk{i}_tokens"])
    return composition([int(row["context_sum"]), int(row["context_max"])], int(row["batch"]), chunks, scored)


def composition(decode: list[int], num_decode: int, chunks: tuple, scored: bool = False) -> StepShape:
    """A step of num_decode decode rows (decode = [sum of their contexts, the longest]) and
    prefill chunks ((cached, new), ...), as the simulator's scheduler would describe it."""
    return StepShape(sum(n for _, n in chunks) + num_decode, len(chunks) + num_decode,
                     decode_context_tokens=decode[0] if num_decode else 0,
                     prefill_attn_pairs=sum(causal_pairs(s, n) for s, n in chunks),
                     prefill_context_tokens=sum(s + n for s, n in chunks), num_decode_seqs=num_decode,
                     decode_max_context=decode[1] if num_decode else 0, prefill_chunks=tuple(chunks), scored=scored)


class ProfileError(ConfigError):
    """A profile file that cannot be used: the message names the file and the field."""


@dataclass(frozen=True)
class Profile:
    path: Path
    data: dict

    @property
    def gpu(self) -> str:
        return self.data["gpu"]

    @property
    def model_name(self) -> str:
        return self.data["model"]["name"]

    @property
    def num_layers(self) -> int:
        return self.data["model"]["num_layers"]

    def tables(self, kv_dtype: str) -> dict[str, dict[str, list[float]]]:
        entry = self.data["kv_dtypes"].get(kv_dtype)
        return entry["tables"] if entry else {}

    def missing(self, kv_dtype: str) -> list[str]:
        """Required tables this KV dtype lacks (all of them if it was not profiled)."""
        tables = self.tables(kv_dtype)
        return [name for name in REQUIRED if len(tables.get(name, {}).get("time_s", ())) == 0]

    def describe(self) -> str:
        return f"{self.path.name} ({self.data['device_name']}, {self.data['date'][:10]})"

    def check_model(self, model: ModelConfig) -> None:
        """The profile must have been measured on this model's shape."""
        for name in SHAPE_FIELDS:
            have, want = self.data["model"][name], getattr(model, name)
            if have != want:
                raise ProfileError(f"{self.path}: field model.{name} is {have}, but model {model.name!r} has "
                                   f"{want}; profile this shape with `kvsim profile --model {model.name}`")


def _fail(path: Path, field: str, problem: str) -> None:
    raise ProfileError(f"{path}: field {field}: {problem}")


def _need(path: Path, obj: dict, key: str, kind, where: str):
    if not isinstance(obj, dict) or key not in obj:
        _fail(path, where + key, "missing")
    value = obj[key]
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        _fail(path, where + key, f"expected {getattr(kind, '__name__', kind)}, got {value!r:.60}")
    return value


def _check_table(path: Path, name: str, table, where: str) -> None:
    columns = TABLES[name]
    if not isinstance(table, dict):
        _fail(path, where, f"expected an object of columns {list(columns)}")
    lengths = set()
    for col in columns:
        values = _need(path, table, col, list, where + ".")
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                _fail(path, f"{where}.{col}[{i}]", f"expected a finite number, got {v!r}")
            if name not in DERIVED and (v < 0 or (col == "time_s" and v == 0)):
                _fail(path, f"{where}.{col}[{i}]", f"expected a {'time > 0' if col == 'time_s' else 'count >= 0'}, "
                                                  f"got {v!r}")
        lengths.add(len(values))
    if len(lengths) > 1:
        _fail(path, where, f"columns {list(columns)} have different lengths {sorted(lengths)}")


def validate(path: Path, data) -> dict:
    """Check a parsed profile's structure; raise ProfileError naming the file and the field."""
    if not isinstance(data, dict):
        _fail(path, "(top level)", "expected a JSON object")
    if data.get("format") != FORMAT:
        _fail(path, "format", f"expected {FORMAT!r}, got {data.get('format')!r} (not a kvsim profile)")
    if data.get("version") != VERSION:
        _fail(path, "version", f"this kvsim reads version {VERSION}, got {data.get('version')!r}")
    for key in ("gpu", "device_name", "date", "timer"):
        _need(path, data, key, str, "")
    _need(path, data, "block_size", int, "")
    model = _need(path, data, "model", dict, "")
    _need(path, model, "name", str, "model.")
    for name in SHAPE_FIELDS:
        _need(path, model, name, int, "model.")
    dtypes = _need(path, data, "kv_dtypes", dict, "")
    for kv, entry in dtypes.items():
        tables = _need(path, entry, "tables", dict, f"kv_dtypes.{kv}.")
        for name, table in tables.items():
            if name not in TABLES:
                _fail(path, f"kv_dtypes.{kv}.tables.{name}", f"unknown table; known: {', '.join(TABLES)}")
            _check_table(path, name, table, f"kv_dtypes.{kv}.tables.{name}")
    for key, value in data.get("memory", {}).items():
        if not isinstance(value, (int, float)) or not value > 0:
            _fail(path, f"memory.{key}", f"expected a bandwidth > 0 in bytes/s, got {value!r}")
    return data


@functools.lru_cache(maxsize=32)
def _load(path: Path, mtime_ns: int, size: int) -> Profile:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ProfileError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    return Profile(path, validate(path, data))


def load_profile(path: str | Path) -> Profile:
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as e:
        raise ProfileError(f"{path}: {e.strerror}") from None
    return _load(path, stat.st_mtime_ns, stat.st_size)  # parsed once while the file is unchanged


def file_name(model_name: str, gpu: str) -> str:
    return f"{model_name}_{gpu}.json"


def shipped_dir() -> Path:
    return Path(str(resources.files("engine").joinpath("profiles")))


def find_profile(model_name: str, gpu: str) -> Profile | None:
    """The profile of (model, GPU): from $KVSIM_PROFILES (files whose model and GPU match, or
    folders holding <model>_<gpu>.json), then the shipped ones; None if there is none."""
    entries = [Path(p) for p in os.environ.get(PROFILES_ENV, "").split(os.pathsep) if p]
    for entry in entries + [shipped_dir()]:
        if entry.is_dir():
            candidate = entry / file_name(model_name, gpu)
            if candidate.is_file():
                return load_profile(candidate)
        elif entry.is_file():
            profile = load_profile(entry)
            if (profile.model_name, profile.gpu) == (model_name, gpu):
                return profile
        elif entry != shipped_dir():
            raise ProfileError(f"{entry}: no such file or folder (named in ${PROFILES_ENV})")
    return None
