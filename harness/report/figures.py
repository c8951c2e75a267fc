"""The report's plots: mIoU against latency and GFLOPs (with the Pareto front), head parameters
(inference / training-only), the per-class IoU heat map and each head's reliability diagram."""

from __future__ import annotations

from harness.evaluation import CalibrationBins
from harness.figures import png_bytes, pyplot
from harness.report.cells import Configuration


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten by another that is at least as fast and at least as accurate."""
    front, best = [], float("-inf")
    for cost, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if accuracy > best:
            front.append((cost, accuracy))
            best = accuracy
    return front


def plots(rows: list[dict], configs: list[Configuration]) -> dict[str, bytes]:
    plt = pyplot()
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
        images[name] = png_bytes(figure)
    figure, axes = plt.subplots(figsize=(6, 0.4 * len(rows) + 1.2))
    axes.barh(label, [r["head_params_inference"] or 0 for r in rows], label="inference")
    axes.barh(label, [r["head_params_training_only"] or 0 for r in rows],
              left=[r["head_params_inference"] or 0 for r in rows], label="training-only")
    axes.set(xlabel="head parameters")
    axes.legend(fontsize=7)
    images["head_params.png"] = png_bytes(figure)
    images["per_class_iou.png"] = png_bytes(_heatmap(plt, configs))
    reliability = _reliability(plt, configs)
    if reliability is not None:
        images["reliability.png"] = png_bytes(reliability)
    return images


def _reliability(plt, configs: list[Configuration]):
    """Accuracy against mean confidence per confidence bin (means over seeds), one line per
    configuration with its ECE, and the diagonal of perfect calibration; None when no cell has them."""
    bins = range(CalibrationBins().bins)
    shown = [c for c in configs if c.mean("ECE") is not None]
    if not shown:
        return None
    figure, axes = plt.subplots(figsize=(5, 4.5))
    axes.plot([0, 100], [0, 100], linestyle="--", color="gray", label="calibrated")
    for config in shown:
        points = [(c, a) for k in bins if (c := config.mean(f"reliability/confidence-{k:02d}")) is not None
                  and (a := config.mean(f"reliability/accuracy-{k:02d}")) is not None]
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                  label=f"{config.label}@{config.backbone} (ECE {config.mean('ECE'):.2f})")
    axes.set(xlabel="mean confidence in bin (%)", ylabel="accuracy in bin (%)", xlim=(0, 100), ylim=(0, 100))
    axes.legend(fontsize=7)
    return figure


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
