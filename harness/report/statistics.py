"""The report's numbers: one row per configuration (means over seeds, cost at the smallest measured
batch) and its mIoU delta against its baseline with a paired bootstrap interval over images and seeds."""

from __future__ import annotations

import statistics

import numpy as np

from harness import metric_keys as keys
from harness.report.cells import (
    Cell,
    Configuration,
    baseline,
    baseline_name,
    configurations,
    mean,
    paired_difference,
    paired_seeds,
)

_GROUP = ("dataset", "backbone", "neck", "classifier")


_MEANS = {"fwIoU": "fwIoU", "pACC": "pACC", "mBoundaryIoU": "mBoundaryIoU", "ECE": "ECE",
          "head_params_inference": keys.params("head_inference"),
          "head_params_training_only": keys.params("head_training_only"), "gflops": keys.gflops()}
_PER_BATCH = {"latency_p50_ms": lambda b: keys.latency(b, "p50"), "latency_p90_ms": lambda b: keys.latency(b, "p90"),
              "throughput_images_per_s": keys.throughput, "peak_memory_mb": keys.peak_memory}


COLUMNS = (*_GROUP, "configuration", "seeds", "mIoU", "mIoU_std", "baseline", "paired_seeds", "delta_vs_softmax",
           "delta_ci_low", "delta_ci_high", "significant", *_MEANS, *_PER_BATCH)


RESAMPLES = 1000


def _dense(per_image: list, num_classes: int):
    """[images, classes, 3] intersection / union / gt-pixel counts from ``per_image_counts`` rows."""
    counts = np.zeros((len(per_image), num_classes, 3), dtype=np.float64)
    for index, rows in enumerate(per_image):
        for c, intersection, union, gt in rows:
            counts[index, c] = (intersection, union, gt)
    return counts


def _resampled_miou(counts, weights):
    """mIoU (percent) for every row of ``weights`` [R, images] (how often each image is drawn),
    over the classes present in the resampled ground truth, as ``SemSegEvaluator`` does."""
    sums = (weights @ counts.reshape(counts.shape[0], -1)).reshape(len(weights), *counts.shape[1:])  # [R, classes, 3]
    present = (sums[..., 2] > 0) & (sums[..., 1] > 0)
    iou = np.where(present, sums[..., 0] / np.maximum(sums[..., 1], 1), 0.0)
    return 100 * iou.sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def bootstrap_delta(head: list[list], base: list[list], resamples: int = RESAMPLES,
                    seed: int = 0) -> tuple[float, float]:
    """95% interval of mIoU(head) - mIoU(base) by a paired bootstrap.

    ``head`` and ``base``: one ``per_image_counts`` list per seed, paired by seed, all over
    the same validation images in the same order. Each replicate draws the images with
    replacement (the same draw for both heads and every seed) and, with several seeds,
    the seeds too; the delta is the mean over the drawn seeds. Identical predictions give
    exactly [0, 0].
    """
    if len(head) != len(base) or not head:
        raise ValueError("bootstrap_delta needs the same number (>= 1) of seeds for both heads")
    images = len(head[0])
    if any(len(p) != images for p in head + base):
        raise ValueError("bootstrap_delta: every evaluation must cover the same images")
    classes = 1 + max((row[0] for p in head + base for image in p for row in image), default=0)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(images, np.full(images, 1.0 / images), size=resamples).astype(np.float64)
    per_seed = np.stack([_resampled_miou(_dense(h, classes), weights) - _resampled_miou(_dense(b, classes), weights)
                         for h, b in zip(head, base)])  # [seeds, R]
    if len(head) > 1:
        drawn = rng.integers(0, len(head), size=(resamples, len(head)))
        deltas = per_seed[drawn, np.arange(resamples)[:, None]].mean(axis=1)
    else:
        deltas = per_seed[0]
    low, high = np.percentile(deltas, [2.5, 97.5])
    return float(low), float(high)


def summarise(cells: list[Cell], latest: bool = False) -> list[dict]:
    """The report's rows (``COLUMNS``), one per configuration, sorted by dataset, backbone,
    neck, classifier, then configuration."""
    return summarise_configurations(configurations(cells, latest))


def summarise_configurations(configs: list[Configuration]) -> list[dict]:
    table = []
    for config in configs:
        runs = [config.cells[s].metrics for s in config.seeds]
        row = dict(zip(_GROUP, (config.dataset, config.backbone, config.neck, config.classifier)))
        mious = config.values("mIoU")
        row.update(configuration=config.label, seeds=len(runs), mIoU=mean(mious),
                   mIoU_std=statistics.stdev(mious) if len(mious) > 1 else 0.0)
        row.update({column: mean([m.get(metric) for m in runs]) for column, metric in _MEANS.items()})
        batch = next(iter(keys.measured_batches(runs[0])), None)  # the smallest
        for column, metric in _PER_BATCH.items():
            row[column] = mean([m.get(metric(batch)) for m in runs]) if batch else None
        row.update(_delta(config, baseline(config, configs)))
        table.append(row)
    return table


def _delta(config: Configuration, base: Configuration | None) -> dict:
    """The delta columns of ``config``'s row against ``base``, over the seeds both ran."""
    row = dict(baseline=None, paired_seeds=None, delta_vs_softmax=None, delta_ci_low=None, delta_ci_high=None,
               significant=None)
    if base is None:
        return row
    seeds = paired_seeds(config, base)
    row.update(baseline=baseline_name(config, base), paired_seeds=len(seeds),
               delta_vs_softmax=paired_difference(config, base))
    counted = [s for s in seeds if config.cells[s].per_image is not None and base.cells[s].per_image is not None]
    if row["delta_vs_softmax"] is not None and counted == seeds:
        low, high = bootstrap_delta([config.cells[s].per_image for s in seeds], [base.cells[s].per_image for s in seeds])
        row.update(delta_ci_low=low, delta_ci_high=high, significant=low > 0 or high < 0)
    return row
