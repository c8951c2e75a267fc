"""The report's predictions section: the same seeded draw of validation images for every head on one
backbone (``harness.evaluation.sample_indices``), each panel titled with its per-image mIoU.

A cell's own evaluation keeps its label maps of those images (``CellResult.predictions``), so the
section runs no model; a cell logged before it did, or whose dataset changed since, is predicted
from its logged weights instead, and the log says so."""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from harness.data import DatasetCatalog, SemSegMapper, dataset_splits, label_space
from harness.errors import InputError
from harness.evaluation import class_colors, colorize, decode_label_map, image_iou, predict_labels, sample_indices
from harness.figures import legend_patch, png_bytes, pyplot, short_name
from harness.logs import progress_logger
from harness.report.cells import Cell, Configuration
from harness.tracking import load_run, read_sample_predictions

LEGEND_COLUMN_INCHES = 1.25  # the width of one legend column (swatch and a short class name)
_CAPTION_INCHES = 0.3  # the height of a panel's caption below it
_TITLES_INCHES = 0.6  # the figure's title and the columns' headings above the panels


def _groups(configs: list[Configuration]) -> dict[tuple, dict[str, Cell]]:
    """(dataset, backbone, neck) -> configuration label -> its cell with the smallest seed."""
    groups: dict[tuple, dict[str, Cell]] = defaultdict(dict)
    for config in configs:
        groups[(config.dataset, config.backbone, config.neck)][config.label] = config.cells[config.seeds[0]]
    return groups


def _kept_labels(cell: Cell, picks: list[int], samples: list[dict], tracking_uri: str | None) -> list | None:
    """The cell's kept label maps of ``picks`` when it has all of them at the images' sizes, else None."""
    kept = cell.predictions
    if kept is None and cell.run_id and tracking_uri:
        kept = cell.predictions = read_sample_predictions(cell.run_id, tracking_uri)
    if not kept or any(str(i) not in kept for i in picks):
        return None
    labels = [decode_label_map(kept[str(i)]) for i in picks]
    same = all(label.shape == tuple(s["sem_seg"].shape) for label, s in zip(labels, samples))
    return labels if same else None


def prediction_panels(configs: list[Configuration], tracking_uri: str | None) -> tuple[dict[str, bytes], list[str]]:
    """For each dataset x backbone x neck: the sample validation images as rows of image | ground
    truth | each configuration's prediction (its cell with the smallest seed: the label maps its
    evaluation kept, or predicted from its logged weights), each panel titled with its per-image mIoU.
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
        picks = sample_indices(len(records))
        mapper = SemSegMapper(len(classes), ignore)
        samples = [mapper(records[i]) for i in picks]
        columns = []
        for label in sorted(heads, key=lambda c: (not c.startswith("softmax"), c)):
            began = time.perf_counter()
            labels = _kept_labels(heads[label], picks, samples, tracking_uri)
            source = "kept by its evaluation"
            if labels is None:
                try:
                    if not heads[label].run_id or not tracking_uri:
                        raise InputError("its cell kept none and has no MLflow run to load its weights from")
                    cfg, model = load_run(heads[label].run_id, tracking_uri)
                except InputError as exc:
                    notes.append(f"{label}@{backbone}/{neck}: no predictions ({exc})")
                    continue
                labels = [predict_labels(model, s["image"], cfg.eval) for s in samples]
                source = "predicted from its logged weights"
            progress_logger.info("report: predictions of %s@%s/%s on %s, %s (%.1f s)", label, backbone, neck, dataset,
                                 source, time.perf_counter() - began)
            columns.append((label, labels))
        if not columns:
            continue
        colors = class_colors(len(classes))
        name = "predictions.png" if len(groups) == 1 else f"predictions_{dataset}_{backbone}_{neck}.png"
        panels[name] = png_bytes(prediction_figure(samples, columns, colors, classes, ignore,
                                                   f"{dataset}, {backbone} + {neck}"))
    return panels, notes


def prediction_figure(samples, columns, colors, classes: list[str], ignore: int, title: str):
    """A matplotlib figure: a row of panels per sample (``{"image", "sem_seg"}`` tensors), the image,
    its ground truth and each of ``columns`` (head, its label maps), each prediction captioned with
    its IoU; then the legend of the classes shown, in a band of its own below them (its height from
    its number of rows), so it never covers an image or a caption."""
    plt = pyplot()
    num_classes = len(classes)
    shown_ids = np.unique(np.concatenate([s["sem_seg"].numpy().ravel() for s in samples]
                                         + [labels.ravel() for _, predicted in columns for labels in predicted]))
    legend = [legend_patch(colors[c] / 255, short_name(classes[c])) for c in shown_ids if 0 <= c < num_classes]
    width = 2 + len(columns)
    legend_columns = max(1, min(len(legend), int(1.6 * width / LEGEND_COLUMN_INCHES)))
    # The band also holds the last row's IoU captions, which hang below their panels: the legend sits
    # at its bottom, under them.
    panel_height, legend_height = 1.4 * len(samples), 0.15 * -(-len(legend) // legend_columns) + 0.1 + _CAPTION_INCHES
    # The grid fills the figure but for the titles' strip, so the band is as tall as its legend.
    height = panel_height + legend_height + _TITLES_INCHES
    figure = plt.figure(figsize=(1.6 * width, height))
    rows = figure.add_gridspec(2, 1, height_ratios=[panel_height, legend_height], hspace=0.02, bottom=0,
                               top=1 - _TITLES_INCHES / height)
    axes = rows[0].subgridspec(len(samples), width).subplots(squeeze=False)
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
    band = figure.add_subplot(rows[1])
    band.axis("off")
    if legend:
        band.legend(handles=legend, loc="lower center", ncol=legend_columns, fontsize=6, frameon=False,
                    borderaxespad=0, handlelength=1, columnspacing=0.8)
    figure.suptitle(title, fontsize=9)
    return figure
