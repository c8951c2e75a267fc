"""Live progress of a grid: a line per cell recorded (trained, failed or measured) and, every
``status_period`` seconds, a line with each running cell's iteration (always, for logs); on a
terminal, a rich progress bar with cells recorded / running / failed, the running cells'
iterations and the ETA. The lines go to ``segheads.progress`` (``harness.logs``)."""

from __future__ import annotations

import statistics
import sys
import time

from harness.logs import progress_logger
from harness.results import CellResult

_SHOWN = 4  # running cells named in the status line


def _name(result: CellResult) -> str:
    tags = result.tags
    return f"{tags['classifier']}@{tags['backbone']}/{tags['neck']} {tags['dataset']} s{tags['seed']}"


class Progress:
    def __init__(self, total: int, status_period: float = 60.0) -> None:
        self.total, self.status_period = total, status_period
        self.done = self.failed = self.peak = 0
        self.running: dict[str, list] = {}  # config_hash -> [name, iteration, iterations]
        self.durations: list[float] = []
        self.began = self._status = time.time()
        self._bar = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True)
            self._task = self._bar.add_task(self._describe(), total=total)
            self._bar.start()

    def eta_seconds(self) -> float | None:
        """Median cell time so far x cells not recorded / the most cells that ran at once (None
        before the first cell is recorded)."""
        if not self.durations:
            return None
        return statistics.median(self.durations) * (self.total - self.done) / max(1, self.peak)

    def _describe(self) -> str:
        eta = self.eta_seconds()
        shown = [f"{name} {it}/{iters}" for name, it, iters in list(self.running.values())[:_SHOWN]]
        more = len(self.running) - len(shown)
        return (f"cells {self.done}/{self.total} recorded, {len(self.running)} running"
                + (f" ({', '.join(shown)}{f', +{more}' if more > 0 else ''})" if shown else "")
                + f", {self.failed} failed" + (f", ETA {eta / 60:.1f} min" if eta is not None else ""))

    def started(self, digest: str, name: str, iterations: int) -> None:
        self.running.setdefault(digest, [name, 0, iterations])
        self.peak = max(self.peak, len(self.running))

    def at(self, digest: str, iteration: int) -> None:
        if digest in self.running:
            self.running[digest][1] = iteration

    def recorded(self, result: CellResult, measuring: bool) -> None:
        """A cell trained (or failed) and is recorded; ``measuring``: its cost follows."""
        self.done += 1
        self.running.pop(result.config_hash, None)
        self.failed += not result.finished
        if result.seconds is not None:
            self.durations.append(result.seconds)
        outcome = f"mIoU {result.metrics['mIoU']:.2f}" if "mIoU" in result.metrics else result.error or ""
        self._print(f"[{self.done}/{self.total}] {_name(result)} {result.status} {outcome} "
                    f"({result.seconds or 0:.0f} s)" + ("; its cost is measured when a node is free for it alone"
                                                             if measuring else "") + f"; {self._describe()}")
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, description=self._describe())

    def measured(self, result: CellResult) -> None:
        outcome = result.measure_error or f"measured in {result.measure_seconds or 0:.0f} s"
        self._print(f"[measured] {_name(result)}: {outcome}")

    def _print(self, line: str) -> None:
        if self._bar is not None:
            self._bar.console.print(line)
        else:
            progress_logger.info(line)

    def tick(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=self._describe())
        elif self.running and time.time() - self._status >= self.status_period:
            self._status = time.time()
            progress_logger.info(f"[running] {self._describe()}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
