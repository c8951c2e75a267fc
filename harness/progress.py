"""Live progress of a grid: a line per finished cell (always, for logs) and, on a terminal,
a rich progress bar with cells done / running / failed and the ETA."""

from __future__ import annotations

import statistics
import sys
import time


class Progress:
    def __init__(self, total: int, slots: int, log) -> None:
        self.total, self.slots, self.log = total, slots, log
        self.done = self.failed = self.running = 0
        self.durations: list[float] = []
        self.began = time.time()
        self._bar = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True)
            self._task = self._bar.add_task(self._describe(), total=total)
            self._bar.start()

    def eta_seconds(self) -> float | None:
        """Median cell time so far x cells not finished / slots (None before the first cell ends)."""
        if not self.durations:
            return None
        return statistics.median(self.durations) * (self.total - self.done) / self.slots

    def _describe(self) -> str:
        eta = self.eta_seconds()
        return (f"cells {self.done}/{self.total} done, {self.running} running, {self.failed} failed"
                + (f", ETA {eta / 60:.1f} min" if eta is not None else ""))

    def started(self) -> None:
        self.running += 1

    def trained(self, result: dict) -> None:
        """A cell trained; its cost is measured once no training is left to start."""
        tags = result["tags"]
        self._print(f"[trained] {tags['classifier']}@{tags['backbone']}/{tags['neck']} {tags['dataset']} s{tags['seed']} "
                    f"mIoU {result['metrics']['mIoU']:.2f} ({result.get('seconds', 0):.0f} s); measured when it can "
                    "time alone")

    def remeasured(self, result: dict) -> None:
        """A FINISHED cell measured again at new measure settings (it is not one of ``total``)."""
        tags = result["tags"]
        outcome = result.get("measure_error") or "its run updated"
        self._print(f"[measured again] {tags['classifier']}@{tags['backbone']}/{tags['neck']} {tags['dataset']} "
                    f"s{tags['seed']}: {outcome}")

    def finished(self, result: dict) -> None:
        self.done += 1
        self.running = max(0, self.running - 1)
        self.failed += result["status"] != "FINISHED"
        if "seconds" in result:
            self.durations.append(result["seconds"])
        tags, metrics = result["tags"], result["metrics"]
        outcome = f"mIoU {metrics['mIoU']:.2f}" if "mIoU" in metrics else result.get("error", "")
        line = (f"[{self.done}/{self.total}] {tags['classifier']}@{tags['backbone']}/{tags['neck']} {tags['dataset']} "
                f"s{tags['seed']} {result['status']} {outcome} ({result.get('seconds', 0):.0f} s); {self._describe()}")
        self._print(line)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, description=self._describe())

    def _print(self, line: str) -> None:
        if self._bar is not None:
            self._bar.console.print(line)
        else:
            self.log(line)

    def tick(self, running: int) -> None:
        self.running = running
        if self._bar is not None:
            self._bar.update(self._task, description=self._describe())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
