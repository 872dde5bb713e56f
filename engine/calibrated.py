"""The calibrated cost model: a step's time from measured tables (a `kvsim profile` file).

Whole steps are measured the way compute mode measures them, so the tables are read directly
and ops only fill in what whole steps cannot separate. Between grid points every table is
piecewise linear (exact at the points); past the last point the end segment continues (never
decreasing), and below the first it goes down to 0 at most.

  pure decode (B sequences, contexts c_i, mean c, longest m):
      decode_step(B, c) + L * max(0, walk(w) - decode_attention(B, c))
    decode_step is linear in the context, so at a fixed batch it sees only the KV bytes read
    (the sum); a long sequence is bound by its own walk instead: one program per (sequence, KV
    head, split) reads its split alone, w = min(m, split length) keys, where the split count
    follows from the launch's rows and block-table capacity (kernels/decode_config.py, as the
    kernel picks it: one split once the rows alone fill the GPU, so a long sequence in a padded
    batch of 96 walks all of it while one in a batch of 64 is split in 3). walk(w) is the
    decode_attention_skew table (one sequence at m among one-block ones) read by the keys its
    program walked.
  steps with prefill chunks (n_j new tokens after s_j cached; N tokens in all; S sequences):
      Lin(N') + L * A + max_j R(s_j, n_j) + L * attention(B, c, m) + head(S) - head(1) + rows(B)
    N' is N padded as the step's CUDA graph pads it (the profile's token buckets);
    Lin(N) = prefill_step(N, 0) - L * prefill_attention(N, 0) is a step without its attention;
    A = max(max_j prefill_attention(n_j, s_j), P * t_pair): one launch covers all chunks, its
    query tiles in parallel (fewer programs than SMs for a small model), so it takes the longest
    chunk's time (a tile's walk over its cached context and causal keys) or, when the causal work
    dominates, the chunks' P causal pairs at t_pair, the time per pair of the longest uncached
    chunk measured (the most parallel launch of the table);
    R(s, n) = prefill_step(n, s) - prefill_step(n, 0) - L * (prefill_attention(n, s) -
    prefill_attention(n, 0)): what a chunk's cached context adds to a measured step beyond its
    attention (the wider table's work), also the longest chunk's, not a sum. One chunk alone is
    exactly prefill_step. Decode rows in such a step run in the decode kernel, as in a decode
    step, with the step's rows and table: attention(B, c, m) = decode_attention(B, c)
    + max(0, walk(w) - decode_attention(B, c));
    rows(B) is what B decode rows add to a step beyond their attention and LM-head rows (packing
    their inputs, per-row work), read off the decode_step table at its shortest context c0:
    decode_step(B, c0) - decode_step(1, c0) - L * (decode_attention(B, c0) - decode_attention(1, c0))
    - (head(B) - head(1)); where the profile measured table_width steps, their extra over (B, table
    width) replaces it (see _fit_width).
  swap and block copies: bytes over the measured bandwidths.
The split rule is the one kernels/decode_config.py holds now; a profile measured under another
rule reads its skew points at walks its kernel did not take (the configs change only with a
re-tune by bench/kernels.py, which is when the profiles are measured again).
Grid points that exceed both neighbours along their row by profile_file.SPIKE are left out
(without_spikes; the model's source names them).

That structural sum is then corrected by a small linear law per kind of step (class Correction),
fitted at load time to the profile's random_steps table (and, for steps that keep attention
scores, its scored_steps table): whole steps of seeded random
compositions (heterogeneous contexts, several chunks) timed as compute mode times them; and with
them its serving_steps (serving_scored_steps): the steps of a short slice of the package's trace
served in compute mode (kvsim/profile_serving.py). Uniform grid points miss what serving steps pay
for: the padded CUDA graph (rows x block-table width: host packing, split count), per-chunk work of
eager steps; random compositions miss how a serving engine's steps look together. The fitting rows
are never the trace rows bench/fidelity.py scores (it refuses a slice that overlaps the profile's
and leaves out any composition equal to a fitted one); a profile without the tables keeps the
structural sum.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import replace
from typing import ClassVar

import numpy as np

from engine.buckets import bucket, scored_split, width_bucket
from engine.config import ModelConfig
from engine.cost_model import CostModel, StepShape
from engine.gpus import GPU
from engine.profile_file import (
    GRID_AXES,
    SCORED_DECODE_ROWS,
    TABLE_WIDTH_PADDING,
    TABLES,
    Profile,
    find_profile,
    load_profile,
    padded,
    row_shape,
    spikes,
)
from kernels.decode_config import decode_walk
from kvcache.dtypes import get_kv_dtype


class Curve:
    """y(x) piecewise linear through measured points (equal x averaged)."""

    __slots__ = ("slopes", "xs", "ys")

    def __init__(self, xs, ys):
        points: dict[float, list[float]] = {}
        for x, y in zip(xs, ys):
            points.setdefault(float(x), []).append(float(y))
        self.xs = sorted(points)
        self.ys = [sum(points[x]) / len(points[x]) for x in self.xs]
        self.slopes = [(y1 - y0) / (x1 - x0) for x0, x1, y0, y1 in
                       zip(self.xs, self.xs[1:], self.ys, self.ys[1:])] or [0.0]

    def __call__(self, x: float) -> float:
        xs, ys = self.xs, self.ys
        i = bisect_right(xs, x) - 1
        if i < 0:  # below the grid: the first segment continues down, to 0 at most
            return max(0.0, ys[0] - max(self.slopes[0], 0.0) * (xs[0] - x))
        if i >= len(xs) - 1:  # past it: the last segment continues up (flat if it fell)
            return ys[-1] + max(self.slopes[-1], 0.0) * (x - xs[-1])
        return ys[i] + self.slopes[i] * (x - xs[i])


class Surface:
    """z(r, x): a Curve over x for every measured r, linear in r between them (rows may cover
    different x ranges: a large batch fits fewer contexts in memory)."""

    __slots__ = ("rows", "rs")

    def __init__(self, table: dict, row: str, col: str):
        by_row: dict[float, tuple[list, list]] = {}
        for r, x, t in zip(table[row], table[col], table["time_s"]):
            xs, ts = by_row.setdefault(float(r), ([], []))
            xs.append(x)
            ts.append(t)
        self.rs = sorted(by_row)
        self.rows = [Curve(*by_row[r]) for r in self.rs]

    def __call__(self, r: float, x: float) -> float:
        rs, rows = self.rs, self.rows
        if len(rs) == 1:
            return rows[0](x)
        i = min(max(bisect_right(rs, r) - 1, 0), len(rs) - 2)
        z0, z1 = rows[i](x), rows[i + 1](x)
        slope = (z1 - z0) / (rs[i + 1] - rs[i])
        if r > rs[-1] or r < rs[0]:
            slope = max(slope, 0.0)
        return max(0.0, z0 + slope * (r - rs[i]))


def nonnegative_lstsq(x: np.ndarray, y: np.ndarray, free: tuple[int, ...] = ()) -> np.ndarray:
    """argmin |x w - y| with w >= 0 except at the `free` columns: least squares, then drop the most
    negative constrained coefficient (to 0) and refit until none is (an active set, without scipy)."""
    scale = np.linalg.norm(x, axis=0)
    scale[scale == 0] = 1.0
    xs, active, w = x / scale, list(range(x.shape[1])), np.zeros(x.shape[1])
    while active:
        w[:] = 0.0
        w[active] = np.linalg.lstsq(xs[:, active], y, rcond=None)[0]
        negative = [j for j in active if j not in free and w[j] < 0]
        if not negative:
            break
        active.remove(min(negative, key=lambda j: w[j]))
    return w / scale


# what the decode rows add, in every law
DECODE_ROWS = ("longest_walk_s", "skewed_walk_s", "longest_walk_x_rows", "context_tokens")
# what the chunks' attention adds, in both laws with prefill: the causal pairs (the structural sum
# takes the longest chunk's measured attention, as if the others ran beside it), the longest row's
# tokens read in the prefill kernels (one program walks a row's whole context unsplit)
PREFILL_ATTENTION = ("causal_pairs", "longest_row_tokens")
# what scoring a step with prefill adds (its chunks in kernels/prefill_scores.py; its decode rows there
# too, or in the decode kernel's score pass where one is long: engine/buckets.scored_split): pairs and
# the longest row as above (priced again: the LSE and score passes), the longest chunk's new tokens (the
# score program of its first slots walks all of them)
SCORED_PREFILL = ("longest_chunk_tokens",)


class Correction:
    """time = w . features(step), fitted to the random_steps and serving_steps rows, one law a kind of step:
      decode-only: structural, structural x uniformity (the batch's mean / longest context: 1 for a
        uniform batch, whose structural sum is the measured grid, lower the more heterogeneous; with the
        decode grid's uniform rows in the fit the law keeps them and still corrects mixed batches),
        rows x width x block_size (the CUDA graph's padded batch and block
        table: the decode kernel's split count follows from it; the host's packing of it is no longer
        inside a step's time),
        the decode rows' terms (DECODE_ROWS): L * walk(w) (the longest sequence's walk; the
        structural sum takes the larger of it and the batch's bytes, a measured step pays some of
        both: its program may start late), that walk x (1 - mean / longest context) (as far as the
        batch is skewed: in a uniform batch every row walks as far and the bytes are the step),
        that walk x decode rows (the long program shares its SM with the others' programs: the more
        rows, the slower its walk) and the context tokens the rows read (the KV bytes streamed,
        which the structural sum interpolates between uniform grid batches), 1. The last two cut
        the held-out mean error of the H100 profile of 2026-12-06 08:05 from 3.2% to 1.8% (fp16
        decode) and 3.3% to 2.7% (fp16 with prefill). The skewed walk (2026-12-06 11:00): over the
        four H100 profiles of 10:08-10:38, the law's worst error on its own uniform decode grid
        fell from 15-22% (batches of 128, contexts of 2,048-8,192) to 9% (mean of the worst), on
        bench/warm_state.py's uniform and capped batches (measured apart from any profile) from a
        median of 2.6% to 1.7% (worst 8.8% to 4.9%), held-out decode from 2.7% to 2.3% (mean)
      with prefill: structural, chunks (per-sequence launch and packing work of the eager step),
        chunk tokens, decode rows, rows x width x block_size (as for decode-only, with the prefill
        graph's padding: sequences to a power of two, the table to the longest sequence of the step),
        the decode rows' terms, PREFILL_ATTENTION: the causal pairs and the longest chunk's tokens
        read (the structural sum prices the chunks' attention as the longest one's measured alone),
        1. Those two with the serving rows: mixed steps' signed median error on the H100 went
        from -3.1..-1.1% (fp16/INT8 full and streaming; h2o -5.6, -10.5%; rows 8000-8500, the
        profile of 11:53 without either) to -0.3, -0.9% (full), -2.8, -1.9% (streaming, not among
        that profile's serving runs), -3.3, -4.0% (h2o) (fresh rows 8500-9000, the profile of
        12:35); tried first on the 11:53 profile with another slice's trace steps as serving rows
      a step keeping attention scores (H2O, TOVA, SnapKV): the law of its kind, fitted to the
        scored_steps rows (decode: its context tokens also price the kernel's score pass and the
        score buffer's read-modify-write, which cover every key a row reads); with prefill (its
        chunks scored by kernels/prefill_scores.py in the step's graph; until 2026-12-06 an eager
        step whose chunks the torch reference scored), the same PREFILL_ATTENTION (the score and
        LSE passes compute every causal pair's probability again; the longest row includes a
        decode row where the rows run in the prefill kernels) + SCORED_PREFILL: the longest
        chunk's new tokens (a serial walk of the score program).
        Until 2026-12-06 12:30 every row of such a step ran in the prefill kernels, decode rows
        too, however long: in the H100 profile of 10:08, 8 decode rows up to 4,309 tokens and a
        25-token chunk took 6.0 ms scored against 1.9 ms unscored; with the walks the held-out
        mean error fell from 9.9% to 3.3% (fp16) and 14.0% to 3.3% (INT8). Now a long decode row
        splits the step (engine/buckets.scored_split). Without a scored law, the unscored one plus
        the roofline's score_time.
    Least squares of the relative error (each row divided by its time: small steps count as much as
    large ones), coefficients >= 0 but the constant, checked on held-out rows first (_checked_fit).
    A kind also tries its REDUCED law (the other weights 0): structural, chunks (prefill), the
    scored features (decode: context tokens; prefill: causal pairs and the longest row's tokens,
    in place of chunks), constant.
    It alone remains with fewer than 2 * MIN_ROWS_PER_FEATURE rows a feature (a profile cut short
    by its budget); where both pass the check, the one of the lower held-out mean error is kept.
    Without rows (an older profile), too few even for the reduced law, or where the check fails,
    the structural prediction is kept unchanged."""

    MIN_ROWS_PER_FEATURE = 3
    NAMES: ClassVar[dict[str, tuple[str, ...]]] = {
        "decode": ("structural", "structural_x_uniformity", "padded_kv_tokens", *DECODE_ROWS, "constant_s"),
        "prefill": ("structural", "chunks", "chunk_tokens", "decode_rows", "padded_kv_tokens", *DECODE_ROWS,
                    *PREFILL_ATTENTION, "constant_s"),
        "decode_scored": ("structural", "structural_x_uniformity", "padded_kv_tokens", *DECODE_ROWS, "constant_s"),
        "prefill_scored": ("structural", "chunks", "chunk_tokens", "decode_rows", "padded_kv_tokens", *DECODE_ROWS,
                           *PREFILL_ATTENTION, *SCORED_PREFILL, "constant_s")}

    REDUCED: ClassVar[dict[str, tuple[str, ...]]] = {
        "decode": ("structural", "constant_s"), "prefill": ("structural", "chunks", "constant_s"),
        "decode_scored": ("structural", "context_tokens", "constant_s"),
        "prefill_scored": ("structural", *PREFILL_ATTENTION, "constant_s")}

    def __init__(self, weights: dict, fitted: set, checks: dict | None = None):
        self.weights, self.fitted = weights, fitted  # kind -> array; compositions fitted to (never scored)
        self.checks = checks or {}  # kind -> held-out median errors, structural vs corrected

    @staticmethod
    def kind(s: StepShape) -> str:
        return ("prefill" if s.prefill_chunks else "decode") + ("_scored" if s.scored else "")

    @staticmethod
    def features(model: CalibratedCostModel, s: StepShape, structural: float) -> list[float]:
        b = s.num_decode_seqs
        rows, width = table = model.graph_table(s)
        walk = model.layers * model.walk_time(s, model.decode_launch(s, table))
        skew = 1.0 - s.decode_context_tokens / (b * s.decode_max_context) if b and s.decode_max_context else 0.0
        decode_rows = [walk, walk * skew, walk * b, s.decode_context_tokens]  # DECODE_ROWS
        if s.prefill_chunks:
            longest = max(c + n for c, n in s.prefill_chunks)
            if s.scored and not scored_split(s.decode_max_context):  # the decode rows in the prefill kernels too
                longest = max(longest, s.decode_max_context)
            out = [structural, len(s.prefill_chunks), s.num_tokens - b, b, rows * width * model.block_size, *decode_rows,
                   s.prefill_attn_pairs, longest]  # PREFILL_ATTENTION
            if s.scored:  # SCORED_PREFILL
                out.append(max(n for _, n in s.prefill_chunks))
            return out + [1.0]
        return [structural, structural * (1.0 - skew), rows * width * model.block_size, *decode_rows, 1.0]

    @staticmethod
    def key(s: StepShape) -> tuple:
        """A composition, whatever order its sequences came in."""
        return (s.num_decode_seqs, s.decode_context_tokens, s.decode_max_context, tuple(sorted(s.prefill_chunks)),
                s.scored)

    @classmethod
    def fit(cls, model: CalibratedCostModel, table, scored_table=None, uniform=None) -> Correction:
        """table: the random_steps and serving_steps rows; scored_table: the scored_steps and
        serving_scored_steps rows (steps keeping scores);
        uniform: the decode_step grid (batch, context, time_s: every row the same context), fitted
        with the decode law's rows so that the law, fitted to heterogeneous batches, keeps uniform
        ones where they are measured (without them it took 0.32 x the structural sum plus the long
        walk: uniform batches of 128-256 rows came out 15-30% fast, an H100 profile of 2026-12-06)."""
        rows = {kind: ([], []) for kind in cls.NAMES}
        shapes = []

        def add(shape: StepShape, seconds: float) -> None:
            x, y = rows[cls.kind(shape)]
            x.append(cls.features(model, shape, model.structural(shape)))
            y.append(seconds)
            shapes.append(shape)

        if uniform and uniform.get("time_s"):
            for b, c, seconds in zip(uniform["batch"], uniform["context"], uniform["time_s"]):
                add(StepShape(b, b, b * c, num_decode_seqs=b, decode_max_context=c), seconds)
        for t, scored in ((table, False), (scored_table, True)):
            if t and t["time_s"]:
                for values in zip(*t.values()):
                    add(row_shape(dict(zip(t, values)), scored), values[-1])
        weights, checks = {}, {}
        for kind, (x, y) in rows.items():
            names = cls.NAMES[kind]
            best = None  # the law (full or reduced) of the lower held-out mean error, among those used
            for columns in (list(range(len(names))), [names.index(n) for n in cls.REDUCED[kind]]):
                if len(y) < 2 * cls.MIN_ROWS_PER_FEATURE * len(columns):
                    continue
                w, check = cls._checked_fit(np.asarray(x)[:, columns], np.asarray(y))
                check["features"] = [names[c] for c in columns]
                better = w is not None and (best is None or check["corrected_mean"] < best[2])
                if kind not in checks or better:
                    checks[kind] = check
                if better:
                    best = (columns, w, check["corrected_mean"])
            if best is not None:
                weights[kind] = np.zeros(len(names))
                weights[kind][best[0]] = best[1]
        return cls(weights, {cls.key(s) for s in shapes}, checks)

    @staticmethod
    def _checked_fit(x: np.ndarray, y: np.ndarray):
        """Fit on the even rows, score on the odd ones: a law whose mean |relative error| there does
        not beat the structural sum's (column 0) is not used (a noisy table fits noise). The mean,
        not the median: the law trades a little on typical steps for much on the tail (the median
        alone rejected laws that cut p95 by a fifth). Kept ones are refitted on every row.
        -> (weights or None, the held-out errors)."""
        fit = lambda xs, ys: nonnegative_lstsq(xs / ys[:, None], np.ones(len(ys)), free=(xs.shape[1] - 1,))
        w = fit(x[::2], y[::2])
        held_x, held_y = x[1::2], y[1::2]
        errors = {"corrected": abs(held_x @ w / held_y - 1), "structural": abs(held_x[:, 0] / held_y - 1)}
        check = {"held_out_rows": len(held_y), "structural": float(np.median(errors["structural"])),
                 "corrected": float(np.median(errors["corrected"])),
                 **{f"{k}_mean": float(np.mean(e)) for k, e in errors.items()},
                 **{f"{k}_p95": float(np.percentile(e, 95)) for k, e in errors.items()}}
        return (fit(x, y) if check["corrected_mean"] < check["structural_mean"] else None), check

    def apply(self, model: CalibratedCostModel, s: StepShape, structural: float) -> float:
        w = self.weights.get(self.kind(s))
        if w is None and s.scored:  # no scored law: the step without scores, plus their bytes
            return self.apply(model, replace(s, scored=False), structural) + model.roofline.score_time(s)
        return structural if w is None else float(np.dot(w, self.features(model, s, structural)))

    def describe(self) -> dict:
        out = {kind: dict(zip(self.NAMES[kind], map(float, w))) for kind, w in self.weights.items()}
        for kind, check in self.checks.items():
            out.setdefault(kind, {"not used": "no better than the structural sum on held-out rows"})
            out[kind]["held_out"] = check
        return out


def joined(*tables: dict | None) -> dict | None:
    """Tables of the same columns as one (random steps and serving steps: fitted as one set)."""
    tables = [t for t in tables if t and t.get("time_s")]
    if len(tables) < 2:
        return tables[0] if tables else None
    return {c: [v for t in tables for v in t[c]] for c in tables[0]}


def without_spikes(tables: dict) -> tuple[dict, list]:
    """The tables less the grid points that exceed both neighbours along their row by more than
    profile_file.SPIKE times (the profiler measures such a point again; one still left would bend
    every step interpolated near it), and [(table, point, seconds)] of those left out."""
    out, dropped = dict(tables), []
    for name, (row, col) in GRID_AXES.items():
        table = tables.get(name)
        drop = set(spikes(table, row, col)) if table and table["time_s"] else set()
        if drop:
            out[name] = {c: [v for i, v in enumerate(values) if i not in drop] for c, values in table.items()}
            dropped += [(name, [table[c][i] for c in TABLES[name][:-1]], table["time_s"][i]) for i in sorted(drop)]
    return out, dropped


def _surface(tables: dict, name: str, row: str, col: str) -> Surface | None:
    table = tables.get(name)
    return Surface(table, row, col) if table and table["time_s"] else None


class CalibratedCostModel:
    def __init__(self, profile: Profile, kv_dtype: str, roofline: CostModel):
        """roofline: the same model on the preset GPU, for the host link when none was measured."""
        t, self.spikes = without_spikes(profile.tables(kv_dtype))
        self.profile, self.kv_dtype, self.layers = profile, kv_dtype, profile.num_layers
        self.source = f"calibrated profile {profile.describe()}"
        if self.spikes:
            self.source += "; left out as spikes: " + ", ".join(
                f"{name}{tuple(point)} {seconds * 1e3:.3g} ms" for name, point, seconds in self.spikes)
        self.decode = _surface(t, "decode_step", "batch", "context")
        self.prefill = _surface(t, "prefill_step", "cached", "tokens")
        self.prefill_attn = _surface(t, "prefill_attention", "cached", "tokens")
        top = max(n for n, c in zip(t["prefill_attention"]["tokens"], t["prefill_attention"]["cached"]) if c == 0)
        self.pair_s = self.prefill_attn(0, top) / (top * (top + 1) / 2)  # t_pair above
        self.head = Curve(t["lm_head_sample"]["rows"], t["lm_head_sample"]["time_s"])
        self.attn = _surface(t, "decode_attention", "batch", "context")
        model = profile.data["model"]
        self.kernel = (model["num_kv_heads"], model["head_dim"], get_kv_dtype(kv_dtype).bytes_per_element,
                       roofline.gpu.num_sms)  # what the decode kernel's split count depends on besides rows, width
        memory = profile.data.get("memory", {})
        self.copy_bw = memory.get("copy_bytes_per_s", roofline.bw / 2)  # each byte read and written
        self.host_bw = memory.get("host_to_device_bytes_per_s", roofline.gpu.host_link_bytes_per_s)
        self.roofline = roofline
        self.floor_s = min(t["decode_step"]["time_s"])  # no step is faster than the fastest one measured
        graph = profile.data.get("settings", {}).get("graph", {})
        self.token_buckets, self.seq_buckets = graph.get("token_buckets", ()), graph.get("seq_buckets", ())
        self.block_size = profile.data["block_size"]
        self.buckets, self.min_width = graph.get("batch_buckets", ()), graph.get("min_width_blocks", 1)
        self.walk = self._fit_walk(t.get("decode_attention_skew")) if self.attn is not None else None
        width = t.get("table_width")
        if width and profile.data.get("settings", {}).get("table_width", {}).get("padded_rows") != TABLE_WIDTH_PADDING:
            width = None  # measured with every row's table padded: host packing that serving does not pay
            self.source += "; table_width not used (every row padded, profiles before 2026-12-06)"
        self.decode_width, self.mixed_extra = self._fit_width(width, t["decode_step"])
        self.rows = self._fit_rows(t["decode_step"]) if self.mixed_extra is None else None
        scored, settings = joined(t.get("scored_steps"), t.get("serving_scored_steps")), profile.data.get("settings", {})
        if scored and settings.get("scored_decode_rows") != SCORED_DECODE_ROWS:
            scored = {c: [v for v, chunks in zip(values, scored["chunks"]) if not chunks] for c, values in scored.items()}
            how = ("the one-token rows in the decode kernel however short" if "scored_decode_rows" in settings
                   else "every row in the prefill kernels, a long decode row one program's walk" if "scored_prefill"
                   in settings else "eager with the torch reference scorer")
            self.source += (f"; scored steps with prefill not used (timed {how}, profiles before 2026-12-06 12:30: "
                            "priced as unscored plus the score bytes)")
        self.correction = Correction.fit(self, joined(t.get("random_steps"), t.get("serving_steps")), scored,
                                         t.get("decode_step"))

    def _fit_walk(self, skew: dict | None) -> Curve | None:
        """walk(w) above: the skew table's times by the keys its long sequence's program walked (one
        sequence at `context` among one-block ones, block tables as wide as it: the kernel split it
        by its own rows and that capacity)."""
        if not skew or not skew["time_s"]:
            return None
        bs = self.block_size
        walks = [self.kernel_walk(b, -(-c // bs), c) for b, c in zip(skew["batch"], skew["context"])]
        return Curve(walks, skew["time_s"])

    def kernel_walk(self, rows: int, width: int, longest: int) -> int:
        """Keys one program of the decode kernel walks for the longest sequence, in a launch of
        `rows` rows with block tables `width` blocks wide."""
        hkv, head_dim, kv_bytes, sms = self.kernel
        return decode_walk(rows, hkv, width * self.block_size, longest, head_dim, kv_bytes, sms)

    def walk_time(self, s: StepShape, launch: tuple[int, int] | None = None) -> float:
        """One layer's walk of the step's longest decode sequence (0 without decode rows or a skew
        table); launch: the step's decode_launch, if already known."""
        if not s.num_decode_seqs or self.walk is None:
            return 0.0
        return self.walk(self.kernel_walk(*(launch or self.decode_launch(s)), s.decode_max_context))

    def _skew(self, b: int, mean: float, longest: int, launch: tuple[int, int]) -> float:
        """What one layer's decode kernel takes beyond the uniform batch when its longest sequence's
        walk (in a launch of (rows, width)) takes longer than the batch's bytes."""
        if self.walk is None or longest <= mean:
            return 0.0
        return max(0.0, self.walk(self.kernel_walk(*launch, longest)) - self.attn(b, mean))

    def decode_launch(self, s: StepShape, table: tuple[int, int] | None = None) -> tuple[int, int]:
        """(rows, block-table width) the decode kernel runs with in this step: a decode step's
        graph; in a step with prefill, the leading rows of its graph that can hold one-token
        sequences (engine/runner.py, Shape.decode_rows) and the step's table. table: the step's
        graph_table, if already known."""
        rows, width = table or self.graph_table(s)
        if s.prefill_chunks:
            rows = min(rows, self.graph_tokens(s.num_tokens, len(s.prefill_chunks) + s.num_decode_seqs))
        return rows, width

    def _fit_rows(self, t: dict) -> Curve:
        """rows(B) above, at every batch the decode_step table t measured at its shortest context."""
        c0 = min(t["context"])
        batches = sorted({b for b, c in zip(t["batch"], t["context"]) if c == c0})
        cost = lambda b: max(0.0, self.decode(b, c0) - self.decode(1, c0) - self.layers * (
            self.attn(b, c0) - self.attn(1, c0)) - (self.head(b) - self.head(1)))
        return Curve(batches, [cost(b) for b in batches])

    def _fit_width(self, table, decode_step: dict) -> tuple[Surface | None, Surface | None]:
        """From the table_width steps (rows at a short context c, block tables padded to w blocks):
        (decode steps' time over (batch, w): its increase from the width the decode_step table was
        measured at to a step's own width is what a long sequence costs the others' rows;
        what a step of one chunk and b decode rows took beyond the structural sum of its parts,
        over (b, w): the mixed step's extra, measured, in place of rows(b)).
        (None, None) for a profile without the table."""
        if not table or not table["time_s"]:
            return None, None
        decode = {col: [] for col in ("batch", "width", "time_s")}
        mixed = {col: [] for col in ("batch", "width", "time_s")}
        context = min(decode_step["context"])
        for n, b, w, measured in zip(*(table[c] for c in TABLES["table_width"])):
            if n and b:
                measured -= self._with_prefill(((0, n),), b, b * context, context, 1 + b, (b, w))  # uniform rows: no walk
            for col, value in zip(("batch", "width", "time_s"), (b, w, measured)):
                (mixed if n else decode)[col].append(value)
        surface = lambda rows: Surface(rows, "batch", "width") if rows["time_s"] else None
        return surface(decode), surface(mixed)

    def step_time(self, s: StepShape) -> float:
        if s.num_tokens == 0:
            return 0.0
        if not s.prefill_chunks and not s.num_decode_seqs:  # a shape without its composition
            return self.roofline.step_time(s)
        t = s.copy_bytes / self.copy_bw + s.swap_bytes / self.host_bw
        return t + max(self.correction.apply(self, s, self.structural(s)), self.floor_s)

    def structural(self, s: StepShape) -> float:
        """The step from the grid tables alone (the sum above), before the fitted correction."""
        b = s.num_decode_seqs
        launch = self.decode_launch(s)  # its width is the step's graph table's
        if not s.prefill_chunks:
            mean = s.decode_context_tokens / b
            t = self.decode(b, mean) + self.layers * self._skew(b, mean, s.decode_max_context, launch)
            if self.decode_width is not None:  # the table as wide as the longest sequence, not the mean
                natural = width_bucket(math.ceil(mean / self.block_size), self.min_width)
                t += max(0.0, self.decode_width(b, launch[1]) - self.decode_width(b, natural))
            return t
        num_seqs = len(s.prefill_chunks) + b
        step = self._with_prefill(s.prefill_chunks, b, s.decode_context_tokens, s.decode_max_context, num_seqs, launch)
        if not b:
            return step
        return step + (self.mixed_extra(b, launch[1]) if self.mixed_extra is not None
                       else self.rows(b))

    def graph_table(self, s: StepShape) -> tuple[int, int]:
        """(rows, block-table width in blocks) of the step's CUDA graph (engine/runner.py): a decode
        step's batch to its bucket; a step with prefill, its sequences to a power of two; the table
        to the longest sequence's blocks, a power of two."""
        if not s.prefill_chunks:
            return padded(s.num_decode_seqs, s.decode_max_context, self.block_size, self.buckets, self.min_width)
        longest = max(s.decode_max_context, *(cached + n for cached, n in s.prefill_chunks))
        seqs = s.num_decode_seqs + len(s.prefill_chunks)
        return bucket(seqs, self.seq_buckets) or seqs, width_bucket(-(-longest // self.block_size), self.min_width)

    def graph_tokens(self, tokens: int, num_seqs: int) -> int:
        """The tokens a prefill step's CUDA graph runs (engine/runner.py): up to the token bucket;
        unchanged where the step runs eagerly (or the profile predates prefill graphs)."""
        if self.seq_buckets and num_seqs > self.seq_buckets[-1]:
            return tokens
        return bucket(tokens, self.token_buckets) or tokens

    def _with_prefill(self, chunks, num_decode: int, decode_tokens: int, max_context: int, num_seqs: int,
                      launch: tuple[int, int]) -> float:
        """A step with prefill chunks [(cached, new)] and num_decode rows (launched in the decode kernel
        as (rows, width)), without rows(B)."""
        L, prefill, attn = self.layers, self.prefill, self.prefill_attn
        n_total = self.graph_tokens(sum(n for _, n in chunks) + num_decode, num_seqs)
        longest = max(attn(cached, n) for cached, n in chunks)  # one launch, tiles in parallel
        if len(chunks) > 1:  # (one chunk alone: exactly its measured step, whatever the tables' noise)
            longest = max(longest, sum(n * (n + 1) // 2 for _, n in chunks) * self.pair_s)
        context = max((prefill(cached, n) - prefill(0, n) - L * (attn(cached, n) - attn(0, n))
                       for cached, n in chunks if cached), default=0.0)
        t = prefill(0, n_total) + L * (longest - attn(0, n_total)) + context
        if num_decode:  # the decode kernel over the one-token rows
            mean = decode_tokens / num_decode
            t += L * (self.attn(num_decode, mean) + self._skew(num_decode, mean, max_context, launch))
        return t + self.head(num_seqs) - self.head(1)


CONSISTENT_STEPS = 0.08  # a profile whose structural sum misses its own held-out whole steps by more (median) is suspect


def consistency(model: CalibratedCostModel) -> tuple[str, list[str]]:
    """What `kvsim profile` says of a fresh profile: per kind of step, the held-out median error of the
    fitted law and of the structural sum alone; and warnings where the structural sum, built from the
    grid's ops and steps, misses the profile's own random whole steps by more than CONSISTENT_STEPS
    (seen once, on an H100 whose slow host inflated small ops by 30-130%: 10.6% where others gave 3-5%)."""
    parts, warnings = [], []
    for kind, check in model.correction.checks.items():
        law = "law" if kind in model.correction.weights else "law not used"
        parts.append(f"{kind} {100 * check['corrected']:.1f}% ({law}; structural sum {100 * check['structural']:.1f}%)")
        if not kind.endswith("_scored") and check["structural"] > CONSISTENT_STEPS:
            warnings.append(f"{kind}: the structural sum misses held-out random steps by {100 * check['structural']:.1f}% "
                            f"(median; above {100 * CONSISTENT_STEPS:.0f}%): the grid's ops and its whole steps disagree, "
                            "as on a busy GPU or a slow host; measure again")
    return "held-out random steps, median |error|: " + ("; ".join(parts) or "none measured"), warnings


def calibrated_or_none(model: ModelConfig, gpu: GPU, kv_dtype: str, roofline: CostModel, profile=None):
    """The calibrated model, or None with roofline.source saying why not (no profile, or one
    without this KV dtype's tables). A profile of another shape of the same name is an error."""
    found = load_profile(profile) if profile is not None else find_profile(model.name, gpu.name)
    if found is None:
        roofline.source += f"; no {gpu.name} profile of {model.name}"
        return None
    found.check_model(model)
    missing = found.missing(kv_dtype)
    if missing:
        roofline.source += f"; profile {found.path.name} lacks {kv_dtype} tables {', '.join(missing)}"
        return None
    return CalibratedCostModel(found, kv_dtype, roofline)
