"""The report's predictions section: the same seeded draw of validation images for every head on one
backbone, from each cell's logged weights, each panel titled with its per-image mIoU."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from harness.data import DatasetCatalog, SemSegMapper, dataset_splits, label_space
from harness.errors import InputError
from harness.evaluation import class_colors, colorize, image_iou, predict_labels
from harness.figures import legend_patch, png_bytes, pyplot
from harness.report.cells import Cell, Configuration
from harness.tracking import load_run

PREDICTION_IMAGES = 6  # validation images in the report's predictions section, drawn with a fixed seed


def _groups(configs: list[Configuration]) -> dict[tuple, dict[str, Cell]]:
    """(dataset, backbone, neck) -> configuration label -> its cell with the smallest seed."""
    groups: dict[tuple, dict[str, Cell]] = defaultdict(dict)
    for config in configs:
        groups[(config.dataset, config.backbone, config.neck)][config.label] = config.cells[config.seeds[0]]
    return groups


def prediction_panels(configs: list[Configuration], tracking_uri: str, count: int = PREDICTION_IMAGES,
                      seed: int = 0) -> tuple[dict[str, bytes], list[str]]:
    """For each dataset x backbone x neck: ``count`` validation images drawn with ``seed``,
    as rows of image | ground truth | each configuration's prediction (its cell with the
    smallest seed, from its logged weights), each panel titled with its per-image mIoU.
    Returns (PNG per group: ``predictions.png`` for one group, else
    ``predictions_<dataset>_<backbone>_<neck>.png``; notes on what could not be shown)."""
    groups, panels, notes = _groups(configs), {}, []
    for (dataset, backbone, neck), heads in sorted(groups.items()):
        try:
            records = DatasetCatalog.get(dataset_splits(dataset)["val"])
            classes, ignore = label_space(dataset)
        except InputError as exc:
            notes.append(f"{dataset}/{backbone}/{neck}: no predictions ({exc})")
            continue
        picks = sorted(np.random.default_rng(seed).choice(len(records), min(count, len(records)), replace=False))
        mapper = SemSegMapper(len(classes), ignore)
        samples = [mapper(records[i]) for i in picks]
        columns = []
        for classifier in sorted(heads, key=lambda c: (not c.startswith("softmax"), c)):
            try:
                cfg, model = load_run(heads[classifier].run_id, tracking_uri)
            except InputError as exc:
                notes.append(f"{classifier}@{backbone}/{neck}: no predictions ({exc})")
                continue
            columns.append((classifier, [predict_labels(model, s["image"], cfg.eval) for s in samples]))
        if not columns:
            continue
        colors = class_colors(len(classes))
        name = "predictions.png" if len(groups) == 1 else f"predictions_{dataset}_{backbone}_{neck}.png"
        panels[name] = _prediction_figure(samples, columns, colors, classes, ignore, f"{dataset}, {backbone} + {neck}")
    return panels, notes


def _prediction_figure(samples, columns, colors, classes: list[str], ignore: int, title: str) -> bytes:
    plt = pyplot()
    num_classes = len(classes)

    width = 2 + len(columns)
    figure, axes = plt.subplots(len(samples), width, figsize=(1.6 * width, 1.75 * len(samples)), squeeze=False)
    for row, sample in enumerate(samples):
        truth = sample["sem_seg"].numpy()
        shown = [("image", sample["image"].permute(1, 2, 0).numpy(), ""), ("ground truth", colorize(truth, colors), "")]
        shown += [(head, colorize(labels[row], colors), f"IoU {image_iou(labels[row], truth, num_classes, ignore):.1f}")
                  for head, labels in columns]
        for col, (heading, picture, caption) in enumerate(shown):
            axes[row, col].imshow(picture, interpolation="nearest")
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
            axes[row, col].set_xlabel(caption, fontsize=7)
            if row == 0:
                axes[row, col].set_title(heading, fontsize=8)
    shown_ids = np.unique(np.concatenate([s["sem_seg"].numpy().ravel() for s in samples]
                                         + [labels.ravel() for _, predicted in columns for labels in predicted]))
    legend = [legend_patch(colors[c] / 255, classes[c]) for c in shown_ids if 0 <= c < num_classes]
    figure.legend(handles=legend, loc="lower center", ncol=min(6, len(legend)), fontsize=6, bbox_to_anchor=(0.5, -0.04))
    figure.suptitle(title, fontsize=9)
    return png_bytes(figure)
