"""The trainer's hooks: metrics every ``log_period``, checkpoints every ``checkpoint_period``,
evaluation every ``eval_period``. Each reports through the worker's ``WorkerContext``."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from harness import metric_keys as keys
from harness.engine import checkpoint
from harness.engine.context import WorkerContext, staging_folder
from harness.engine.trainer import HookBase, NonFiniteLossError

REPORT_INTERVAL_S = 2.0  # Ray Train V2's controller poll (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, default 2 s)


def _due(iteration: int, period: int, last: int) -> bool:
    return bool(period) and iteration % period == 0 and iteration != last


class MetricsHook(HookBase):
    """Every ``period`` steps (and at the last) one history row: each loss term, their sum and
    the learning rate, averaged over the period and over the workers. The period's losses
    are copied from the device once. The rows are reported (``context.report``: ``{"iteration",
    "rows"}``, each row with ``time/iters_per_second`` and ``time/eta_seconds`` added) when every
    worker's last report is ``report_interval`` seconds old or the run ends, all rows since the
    last report at once: Ray Train V2's controller takes one report per worker per poll (every
    2 s), and a worker that reports sooner waits for it. Raises ``NonFiniteLossError`` naming the
    first step whose loss was NaN or inf on any worker: every worker raises it at the same step,
    so none waits on the others."""

    def __init__(self, context: WorkerContext, period: int, report_interval: float = REPORT_INTERVAL_S) -> None:
        self.context, self.period, self.report_interval = context, period, report_interval
        self._steps: list[torch.Tensor] = []
        self._unreported: list[dict] = []
        self._reported = self._row_time = time.monotonic()

    def before_train(self) -> None:
        self._reported = self._row_time = time.monotonic()

    def after_step(self) -> None:
        trainer = self.trainer
        self._steps.append(trainer.step_losses)
        last = trainer.iteration == trainer.cfg.iters
        if trainer.iteration % self.period and not last:
            return
        losses = torch.stack(self._steps)  # [steps, terms]
        now = time.monotonic()
        due = float(now - self._reported >= self.report_interval)
        # One collective and one copy for the period: the losses and whether this worker may report.
        packed = self.context.all_mean(torch.cat([losses.flatten(), losses.new_tensor([due])])).cpu()
        losses, report = packed[:-1].view(losses.shape), bool(packed[-1] == 1.0) or last  # every worker agrees
        first = trainer.iteration - len(self._steps)
        steps, self._steps = len(self._steps), []
        names = trainer.loss_names
        finite = torch.isfinite(losses.sum(dim=1))
        if not bool(finite.all()):
            bad = int((~finite).nonzero()[0])
            raise NonFiniteLossError(first + bad, dict(zip(names, losses[bad].tolist())))
        means = losses.mean(dim=0).tolist()
        row = {"iteration": trainer.iteration, "lr": trainer.optimizer.param_groups[0]["lr"],
               **{keys.loss(k): v for k, v in zip(names, means)}, keys.TOTAL_LOSS: sum(means)}
        trainer.history.append(row)
        speed = steps / max(now - self._row_time, 1e-9)
        self._row_time = now
        self._unreported.append({**row, keys.ROW_SPEED: speed,
                                 keys.ROW_ETA: (trainer.cfg.iters - trainer.iteration) / speed})
        if report:
            self.context.report({"iteration": trainer.iteration, "rows": self._unreported})
            self._unreported, self._reported = [], time.monotonic()


class CheckpointHook(HookBase):
    """Every ``period`` steps (not the last: the cell's final checkpoint carries its result), each
    worker writes its part of checkpoint ``checkpoint_<iteration>`` and reports it."""

    def __init__(self, context: WorkerContext, period: int) -> None:
        self.context, self.period = context, period

    def after_step(self) -> None:
        trainer = self.trainer
        if self.context.keeps_checkpoints and _due(trainer.iteration, self.period, trainer.cfg.iters):
            save(self.context, trainer, {"iteration": trainer.iteration})


def save(context: WorkerContext, trainer, metrics: dict, extra: Callable[[object], None] | None = None) -> None:
    """Write and report this worker's part of a checkpoint at ``trainer.iteration``; ``extra(folder)``
    adds files (rank 0)."""
    folder = staging_folder()
    checkpoint.write(folder, trainer.state_dict() if context.rank == 0 else None, context.rank)
    if extra is not None and context.rank == 0:
        extra(folder)
    context.report(metrics, folder, checkpoint.folder_name(trainer.iteration))


class EvalHook(HookBase):
    """Every ``period`` steps (not the last: the cell evaluates after training), rank 0 runs
    ``evaluate()`` -> metrics, added as ``val/<name>`` to the history row of that step and
    reported as a row of their own; every worker reports."""

    def __init__(self, context: WorkerContext, period: int, evaluate: Callable[[], dict[str, float]]) -> None:
        self.context, self.period, self.evaluate = context, period, evaluate

    def after_step(self) -> None:
        trainer = self.trainer
        if not _due(trainer.iteration, self.period, trainer.cfg.iters):
            return
        metrics = {}
        if self.context.rank == 0:
            metrics = {keys.periodic(k): v for k, v in self.evaluate().items()}
            trainer.model.train()
        rows = trainer.history
        if rows and rows[-1]["iteration"] == trainer.iteration:
            rows[-1].update(metrics)
        else:
            rows.append({"iteration": trainer.iteration, **metrics})
        self.context.report({"iteration": trainer.iteration, "rows": [{"iteration": trainer.iteration, **metrics}]})
