"""Progress bars on stderr. A simulation's bar is fed by a thread that only reads the
simulation's clock and request list, so showing progress can never change a result."""

from __future__ import annotations

import sys
import threading


def wanted(setting: bool | None) -> bool:
    """--progress / --no-progress, else on when stderr is a terminal."""
    return sys.stderr.isatty() if setting is None else setting


class SimProgress:
    """`with SimProgress(sim, total=n_requests)` (open loop) or `until=duration_s` (closed loop)."""

    def __init__(self, sim, *, total: int | None, until: float | None, label: str = "", enabled: bool = True,
                 interval_s: float = 0.5):
        self.sim, self.total, self.until, self.label = sim, total, until, label
        self.enabled, self.interval_s = enabled, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar = None

    def _done(self) -> int:
        from scheduler.request import Status

        return sum(1 for s in list(self.sim.seqs) if s.status in (Status.FINISHED, Status.REJECTED))

    def _update(self) -> None:
        now = float(self.sim.env.now)
        if self.total is not None:
            self._bar.n = self._done()
            self._bar.set_postfix_str(f"sim {now:,.1f} s", refresh=False)
        else:
            self._bar.n = round(min(now, self.until), 1)
            self._bar.set_postfix_str(f"{self._done():,} requests done", refresh=False)
        self._bar.refresh()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._update()

    def __enter__(self):
        if self.enabled:
            from tqdm import tqdm

            unit = "req" if self.total is not None else "sim s"
            self._bar = tqdm(total=self.total if self.total is not None else self.until, desc=self.label,
                             unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._update()
            self._bar.close()
        return False


def points_bar(total: int, enabled: bool, desc: str):
    """A bar over finished points (compare, sweep)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="point", file=sys.stderr, disable=not enabled, dynamic_ncols=True)
