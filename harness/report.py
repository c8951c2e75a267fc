"""``segheads report``: a grid's MLflow runs -> ``results.csv``, ``report.md``, plots and a
self-contained ``report.html`` (docs/architecture.md, "report").

One row per configuration (``harness.cells``: cells equal but for the seed; configurations
that share dataset, backbone, neck and classifier are labelled by the settings that differ,
or, with ``latest``, only the newest is shown): mIoU mean and std over its seeds, fwIoU,
pACC, head parameters (inference / training-only), GFLOPs, latency p50/p90, throughput and
peak memory at the smallest measured batch size, and the mIoU delta against its baseline
(``harness.cells.baseline``, named in the row) over the seeds both ran, with a 95% paired
bootstrap interval (``bootstrap_delta``); a delta whose interval excludes zero is marked
significant.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import statistics
from collections import defaultdict
from pathlib import Path

from harness.cells import Cell, Configuration, baseline, baseline_name, configurations, paired_difference, paired_seeds
from harness.errors import InputError

_GROUP = ("dataset", "backbone", "neck", "classifier")
_MEANS = {"fwIoU": "fwIoU", "pACC": "pACC", "head_params_inference": "params/head_inference",
          "head_params_training_only": "params/head_training_only", "gflops": "gflops/total"}
COLUMNS = (*_GROUP, "configuration", "seeds", "mIoU", "mIoU_std", "baseline", "paired_seeds", "delta_vs_softmax",
           "delta_ci_low", "delta_ci_high", "significant", *_MEANS, "latency_p50_ms", "latency_p90_ms",
           "throughput_images_per_s", "peak_memory_mb")
RESAMPLES = 1000


def _dense(per_image: list, num_classes: int):
    """[images, classes, 3] intersection / union / gt-pixel counts from ``per_image_counts`` rows."""
    import numpy as np

    counts = np.zeros((len(per_image), num_classes, 3), dtype=np.float64)
    for index, rows in enumerate(per_image):
        for c, intersection, union, gt in rows:
            counts[index, c] = (intersection, union, gt)
    return counts


def _resampled_miou(counts, weights):
    """mIoU (percent) for every row of ``weights`` [R, images] (how often each image is drawn),
    over the classes present in the resampled ground truth, as ``SemSegEvaluator`` does."""
    import numpy as np

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
    import numpy as np

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


def cells_from_mlflow(experiment: str | None = None, parent_run_id: str | None = None,
                      tracking_uri: str | None = None) -> tuple[str, list[Cell]]:
    """(report name, FINISHED cells with their per-image counts) of an experiment or of one parent run."""
    from harness.tracking import (FINISHED_CELLS, experiment_id, open_client, read_per_image_counts,
                                  resolve_tracking_uri, search_all_runs)

    uri = resolve_tracking_uri(tracking_uri)
    client = open_client(uri)
    if parent_run_id:
        try:
            parent = client.get_run(parent_run_id)
        except Exception:
            raise InputError(f"--parent {parent_run_id!r}: no such run in {uri}") from None
        experiment_ids, name = [parent.info.experiment_id], parent.data.tags.get("mlflow.runName", parent_run_id)
        query = f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'FINISHED'"
    else:
        experiment_ids, name, query = [experiment_id(client, experiment, uri)], experiment, FINISHED_CELLS
    cells = [Cell.from_run(run) for run in search_all_runs(client, experiment_ids, query)]
    for cell in cells:
        cell.per_image = read_per_image_counts(cell.run_id, uri)
    if not cells:
        raise InputError(f"{'run ' + parent_run_id if parent_run_id else 'experiment ' + repr(experiment)}: "
                         "no FINISHED cells to report")
    return name, cells


def _smallest_batch(metrics: dict) -> int | None:
    batches = [int(k.split("/")[1][2:]) for k in metrics if k.startswith("latency/bs") and k.endswith("/p50_ms")]
    return min(batches) if batches else None


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def summarise(cells: list[Cell], latest: bool = False) -> list[dict]:
    """The report's rows (``COLUMNS``), one per configuration, sorted by dataset, backbone,
    neck, classifier, then configuration."""
    return _rows(configurations(cells, latest))


def _rows(configs: list[Configuration]) -> list[dict]:
    rows = []
    for config in configs:
        runs = [config.cells[s].metrics for s in config.seeds]
        row = dict(zip(_GROUP, (config.dataset, config.backbone, config.neck, config.classifier)))
        mious = config.values("mIoU")
        row.update(configuration=config.label, seeds=len(runs), mIoU=_mean(mious),
                   mIoU_std=statistics.stdev(mious) if len(mious) > 1 else 0.0)
        row.update({column: _mean([m.get(metric) for m in runs]) for column, metric in _MEANS.items()})
        batch = _smallest_batch(runs[0])
        for column, metric in (("latency_p50_ms", "latency/bs{b}/p50_ms"), ("latency_p90_ms", "latency/bs{b}/p90_ms"),
                               ("throughput_images_per_s", "throughput/bs{b}/images_per_s"),
                               ("peak_memory_mb", "memory/bs{b}/peak_mb")):
            row[column] = _mean([m.get(metric.format(b=batch)) for m in runs]) if batch else None
        row.update(_delta(config, baseline(config, configs)))
        rows.append(row)
    return rows


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


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _markdown(name: str, rows: list[dict]) -> str:
    header = ["dataset", "backbone", "neck", "configuration", "seeds", "mIoU", "vs baseline", "baseline", "fwIoU",
              "pACC", "head params (inference / training-only)", "GFLOPs", "p50 ms", "p90 ms", "images/s", "peak MB"]
    lines = [f"# {name}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        miou = f"{_fmt(r['mIoU'])} ± {_fmt(r['mIoU_std'])}" if r["seeds"] > 1 else _fmt(r["mIoU"])
        delta = "" if r["delta_vs_softmax"] is None else f"{r['delta_vs_softmax']:+.2f}"
        if r["delta_ci_low"] is not None:
            delta += f" [{r['delta_ci_low']:+.2f}, {r['delta_ci_high']:+.2f}]" + ("*" if r["significant"] else "")
        base = "" if r["baseline"] is None else f"{r['baseline']} ({r['paired_seeds']} paired)"
        params = f"{_fmt(r['head_params_inference'], 0)} / {_fmt(r['head_params_training_only'], 0)}"
        cells = [r["dataset"], r["backbone"], r["neck"], r["configuration"], str(r["seeds"]), miou, delta, base,
                 _fmt(r["fwIoU"]), _fmt(r["pACC"]), params, _fmt(r["gflops"], 3), _fmt(r["latency_p50_ms"], 1),
                 _fmt(r["latency_p90_ms"], 1), _fmt(r["throughput_images_per_s"]), _fmt(r["peak_memory_mb"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "One row per configuration: cells equal in everything but the seed; a label in brackets gives the "
              "settings that tell configurations of one head apart. mIoU in percent (mean ± std over seeds); vs "
              "baseline: the mIoU delta against the named softmax configuration (same dataset and backbone, the same "
              "neck where there is one) over the seeds both ran, seed paired with seed, with its 95% paired bootstrap "
              f"interval over validation images (and seeds), {RESAMPLES} resamples; * marks an interval that "
              "excludes zero. Latency, throughput and memory at the smallest measured batch size; GFLOPs = 2 x GMACs "
              "per image.", ""]
    return "\n".join(lines)


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten by another that is at least as fast and at least as accurate."""
    front, best = [], float("-inf")
    for cost, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if accuracy > best:
            front.append((cost, accuracy))
            best = accuracy
    return front


def _plots(rows: list[dict], configs: list[Configuration]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def png(figure) -> bytes:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(figure)
        return buffer.getvalue()

    images = {}
    label = [f"{r['configuration']}@{r['backbone']}" for r in rows]
    for name, column, xlabel in (("miou_vs_latency.png", "latency_p50_ms", "latency p50 (ms)"),
                                 ("miou_vs_gflops.png", "gflops", "GFLOPs per image")):
        points = [(r[column], r["mIoU"], text) for r, text in zip(rows, label) if r[column] is not None and r["mIoU"] is not None]
        figure, axes = plt.subplots(figsize=(6, 4))
        for x, y, text in points:
            axes.scatter(x, y)
            axes.annotate(text, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = _pareto([(x, y) for x, y, _ in points])
        if front:
            axes.step([p[0] for p in front], [p[1] for p in front], where="post", linestyle="--", color="gray",
                      label="Pareto front")
            axes.legend(fontsize=7)
        axes.set(xlabel=xlabel, ylabel="val mIoU (%)")
        images[name] = png(figure)
    figure, axes = plt.subplots(figsize=(6, 0.4 * len(rows) + 1.2))
    axes.barh(label, [r["head_params_inference"] or 0 for r in rows], label="inference")
    axes.barh(label, [r["head_params_training_only"] or 0 for r in rows],
              left=[r["head_params_inference"] or 0 for r in rows], label="training-only")
    axes.set(xlabel="head parameters")
    axes.legend(fontsize=7)
    images["head_params.png"] = png(figure)
    images["per_class_iou.png"] = png(_heatmap(plt, configs))
    return images


def _heatmap(plt, configs: list[Configuration]):
    heads = [f"{c.label}@{c.backbone}" + (f"/{c.neck}" if len({x.neck for x in configs}) > 1 else "") for c in configs]
    classes = sorted({k[4:] for c in configs for cell in c.cells.values() for k in cell.metrics if k.startswith("IoU-")})
    matrix = [[c.mean(f"IoU-{name}") or 0.0 for name in classes] for c in configs]
    figure, axes = plt.subplots(figsize=(max(4, 0.45 * len(classes) + 2), 0.4 * len(heads) + 1.5))
    image = axes.imshow(matrix, aspect="auto", cmap="viridis", vmin=0, vmax=100)
    axes.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    axes.set_yticks(range(len(heads)), heads, fontsize=7)
    figure.colorbar(image, label="IoU (%)")
    return figure


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
    import numpy as np

    from harness.data import DatasetCatalog, SemSegMapper
    from harness.predict import class_colors, load_run, predict_labels
    from harness.run import dataset_splits, label_space

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch

    from harness.predict import colorize, image_iou

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
    legend = [Patch(color=colors[c] / 255, label=classes[c]) for c in shown_ids if 0 <= c < num_classes]
    figure.legend(handles=legend, loc="lower center", ncol=min(6, len(legend)), fontsize=6, bbox_to_anchor=(0.5, -0.04))
    figure.suptitle(title, fontsize=9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _figures(images: dict[str, bytes]) -> str:
    return "".join(f"<figure><img alt='{n}' src='data:image/png;base64,{base64.b64encode(b).decode()}'>"
                   f"<figcaption>{n}</figcaption></figure>" for n, b in images.items())


def _html(name: str, rows: list[dict], images: dict[str, bytes], predictions: dict[str, bytes] | None = None,
          notes: list[str] | None = None) -> str:
    header = "".join(f"<th onclick='sortBy({i})'>{html.escape(c)}</th>" for i, c in enumerate(COLUMNS))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r[c], 3))}</td>" for c in COLUMNS) + "</tr>" for r in rows)
    figures = _figures(images)
    if predictions or notes:
        figures += ("<h2 id='predictions'>Predictions</h2><p>The same validation images (a fixed, seeded draw) "
                    "for every head on one backbone, with each image's mIoU under its panel.</p>"
                    + "".join(f"<p class='note'>{html.escape(n)}</p>" for n in notes or [])
                    + _figures(predictions or {}))
    script = """function sortBy(i){const t=document.getElementById('results'),b=t.tBodies[0];
const rows=[...b.rows],asc=t.dataset.col==i?!(t.dataset.asc==='true'):true;t.dataset.col=i;t.dataset.asc=asc;
const v=r=>{const s=r.cells[i].textContent.replace(/,/g,'');const n=parseFloat(s);return isNaN(n)?s:n};
rows.sort((a,c)=>{const x=v(a),y=v(c);return (x>y?1:x<y?-1:0)*(asc?1:-1)});rows.forEach(r=>b.appendChild(r));}"""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(name)}</title><style>"
            "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px}"
            "th{cursor:pointer;background:#eee}figure{display:inline-block}</style></head><body>"
            f"<h1>{html.escape(name)}</h1><table id='results'><thead><tr>{header}</tr></thead><tbody>{body}</tbody>"
            f"</table>{figures}<script>{script}</script></body></html>")


def write_report(name: str, cells: list[Cell], out: Path, tracking_uri: str | None = None,
                 latest: bool = False) -> list[Path]:
    """Write ``results.csv``, ``report.md``, the PNG plots and ``report.html`` into ``out``;
    with ``tracking_uri`` (cells with ``run_id``s), the predictions section too; with
    ``latest``, only the newest configuration of each dataset x backbone x neck x classifier."""
    configs = configurations(cells, latest)
    rows = _rows(configs)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "report.md").write_text(_markdown(name, rows))
    images = _plots(rows, configs)
    for file_name, data in images.items():
        (out / file_name).write_bytes(data)
    predictions, notes = prediction_panels(configs, tracking_uri) if tracking_uri else ({}, [])
    for file_name, data in predictions.items():
        (out / file_name).write_bytes(data)
    if predictions or notes:
        with open(out / "report.md", "a") as handle:
            handle.write("\n## Predictions\n\n" + "".join(f"- {n}\n" for n in notes)
                         + "".join(f"![{n}]({n})\n" for n in predictions))
    (out / "report.html").write_text(_html(name, rows, images, predictions, notes))
    return [out / "results.csv", out / "report.md", *(out / n for n in images), *(out / n for n in predictions),
            out / "report.html"]


SCALING_CLASSES = (150, 300, 500, 847, 2000)


def vocabulary_scaling(backbone: str, out: Path, classes=SCALING_CLASSES, classifiers=None, image_size: int = 512,
                       embed_dim: int = 256, neck: str = "mlp", threads: int = 0) -> list[Path]:
    """ProtoSeg §5.3 / Table 4 as a tool, no training: every head's parameters, GFLOPs and
    latency (batch 1) on ``backbone`` as the class count grows. Writes ``scaling.csv``,
    ``scaling.md`` and ``scaling.png`` (cost against classes) into ``out``."""
    import torch

    from classifiers import list_classifiers
    from harness.config import MeasureConfig, RunConfig, apply_overrides
    from harness.measure import measure_model
    from harness.run import build_segmentor

    settings = MeasureConfig(image_size=image_size, batch_sizes=[1], warmup=2, iters=5)
    rows = []
    for classifier in classifiers or list_classifiers():
        cfg = apply_overrides(RunConfig(), [f"model.backbone={backbone}", f"model.classifier={classifier}",
                                            f"model.neck={neck}", f"model.embed_dim={embed_dim}"])
        for count in classes:
            torch.manual_seed(0)
            metrics, _ = measure_model(build_segmentor(cfg, count, 255), settings, torch.device("cpu"), threads)
            rows.append({"classifier": classifier, "classes": count, "head_params": metrics["params/head"],
                         "head_params_inference": metrics["params/head_inference"],
                         "head_nonlearnable": metrics["params/head_nonlearnable"],
                         "head_gflops": metrics.get("gflops/head", 0.0), "gflops": metrics["gflops/total"],
                         "latency_p50_ms": metrics["latency/bs1/p50_ms"]})
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "scaling.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    header = "| classifier | classes | head params | non-learnable | head GFLOPs | total GFLOPs | p50 ms |"
    lines = [f"# Vocabulary scaling on {backbone} + {neck}, D={embed_dim}, {image_size}x{image_size}, batch 1", "",
             header, "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['classifier']} | {r['classes']} | {r['head_params']:,} | {r['head_nonlearnable']:,} | "
              f"{r['head_gflops']:.3f} | {r['gflops']:.3f} | {r['latency_p50_ms']:.1f} |" for r in rows]
    (out / "scaling.md").write_text("\n".join(lines) + "\n")
    (out / "scaling.png").write_bytes(_scaling_plot(rows))
    return [out / "scaling.csv", out / "scaling.md", out / "scaling.png"]


def _scaling_plot(rows: list[dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, 3, figsize=(13, 3.6))
    for classifier in dict.fromkeys(r["classifier"] for r in rows):
        mine = [r for r in rows if r["classifier"] == classifier]
        for axes, column in zip(panels, ("head_params", "head_gflops", "latency_p50_ms")):
            axes.plot([r["classes"] for r in mine], [r[column] for r in mine], marker="o", label=classifier)
    for axes, label in zip(panels, ("head parameters", "head GFLOPs per image", "latency p50 (ms)")):
        axes.set(xlabel="classes", ylabel=label)
    panels[0].legend(fontsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()
