"""Running the points of `compare` and `sweep`: one after another, in local processes, or as Ray
tasks (`--ray [ADDRESS]`). Each point is seeded by itself, so the way they run never changes a
result. Each finished point is saved under `points/KEY/` (its tables, then `result.json` as the
completion mark); a rerun in the same directory skips points whose mark exists with the same
spec, so an interrupted sweep restarts where it stopped."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

from kvsim.options import ParallelOptions
from kvsim.progress import points_bar
from kvsim.rundir import read_json, read_table, write_json, write_table
from kvsim.simulate import Point, PointResult, run_point

TABLES = ("requests", "steps", "sessions")


class PointStore:
    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def load(self, point: Point) -> PointResult | None:
        mark = self.directory / point.key / "result.json"
        if not mark.is_file():
            return None
        saved = read_json(mark)
        if saved.get("spec") != point.spec():
            return None
        tables = {name: read_table(mark.parent, name) for name in TABLES}
        if any(t is None for t in tables.values()):
            return None
        return PointResult(point.key, saved["params"], saved["summary"], **tables)

    def save(self, point: Point, result: PointResult) -> None:
        where = self.directory / point.key
        for name in TABLES:
            write_table(where, name, getattr(result, name), csv=False)
        write_json(where / "result.json", {"key": point.key, "spec": point.spec(), "params": result.params,
                                           "summary": result.summary})


def run_points(points: list[Point], run_dir: Path, options: ParallelOptions, *, progress: bool,
               log=lambda msg: print(msg, file=sys.stderr)) -> tuple[list[PointResult], dict]:
    """Results in the order of `points`, and counts {points_run, points_skipped}."""
    keys = [p.key for p in points]
    assert len(set(keys)) == len(keys), f"point keys repeat: {keys}"
    store = PointStore(Path(run_dir) / "points")
    results: dict[str, PointResult] = {}
    if options.resume:
        for p in points:
            found = store.load(p)
            if found is not None:
                results[p.key] = found
    todo = [p for p in points if p.key not in results]
    where = f"Ray ({options.ray})" if options.ray else f"{_jobs(options, len(todo), todo)} local process(es)"
    log(f"kvsim: {len(todo)} point(s) to run on {where}, {len(results)} already finished in {store.directory}")
    by_key = {p.key: p for p in points}
    with points_bar(len(points), progress, "points") as bar:
        bar.update(len(results))
        for result in _execute(todo, options, progress):
            store.save(by_key[result.key], result)
            results[result.key] = result
            bar.set_postfix_str(result.key, refresh=False)
            bar.update(1)
    return [results[k] for k in keys], {"points_run": len(todo), "points_skipped": len(points) - len(todo)}


def _jobs(options: ParallelOptions, n: int, points: list[Point] = ()) -> int:
    """--jobs, else one per core; but one at a time where points time the real model on the GPU
    (processes sharing a GPU would slow each other's measured steps)."""
    if options.jobs:
        return max(1, min(n, options.jobs))
    from kvsim.simulate import backend_name

    if any(backend_name(p.engine) == "compute" for p in points):
        return 1
    return max(1, min(n, os.cpu_count() or 1))


def _execute(todo: list[Point], options: ParallelOptions, progress: bool) -> Iterator[PointResult]:
    if not todo:
        return
    if options.ray:
        yield from _ray(todo, options)
        return
    jobs = _jobs(options, len(todo), todo)
    if jobs == 1:
        for p in todo:
            yield run_point(p, progress=progress)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: a forked child of a process holding torch/OpenMP threads can hang
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_ignore_sigint)
    try:
        futures = [pool.submit(run_point, p) for p in todo]
        for future in as_completed(futures):
            yield future.result()
    except BaseException:  # Ctrl-C or a failed point: stop the others now, keep what finished
        workers = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in workers:
            worker.terminate()
        raise
    pool.shutdown()


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the parent, which stops them (no traceback from every worker)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _ray(todo: list[Point], options: ParallelOptions) -> Iterator[PointResult]:
    try:
        import ray
    except ImportError:
        from engine.errors import KvsimError

        raise KvsimError("--ray needs Ray: pip install 'ray>=2.9' (or pip install 'kvsim[ray]')") from None
    started = not ray.is_initialized()
    if started:
        kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if options.ray == "local":
            ray.init(num_cpus=options.jobs or os.cpu_count(), **kwargs)
        else:
            ray.init(address=options.ray, **kwargs)
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(run_point)
        pending = {task.remote(p): p.key for p in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                pending.pop(ref)
                yield _unwrap(ray, ref)
    finally:
        if started:
            ray.shutdown()


def _unwrap(ray, ref) -> PointResult:
    """ray.get, re-raising a task's own error (a ConfigError stays a ConfigError)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise
