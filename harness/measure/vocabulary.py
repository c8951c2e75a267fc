"""The vocabulary sweep (ProtoSeg §5.3 / Table 4 as a tool, no training): each head's parameters,
GFLOPs and latency as the class count grows."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from classifiers import list_classifiers
from harness import metric_keys as keys
from harness.config import MeasureConfig, RunConfig, apply_overrides
from harness.figures import png_bytes, pyplot
from harness.measure.model import measure_model
from harness.modeling import build_segmentor

SCALING_CLASSES = (150, 300, 500, 847, 2000)


def vocabulary_scaling(backbone: str, out: Path, classes=SCALING_CLASSES, classifiers=None, image_size: int = 512,
                       embed_dim: int = 256, neck: str = "mlp", threads: int = 0) -> list[Path]:
    """ProtoSeg §5.3 / Table 4 as a tool, no training: every head's parameters, GFLOPs and
    latency (batch 1) on ``backbone`` as the class count grows. Writes ``scaling.csv``,
    ``scaling.md`` and ``scaling.png`` (cost against classes) into ``out``."""
    settings = MeasureConfig(image_size=image_size, batch_sizes=[1], warmup=2, iters=5)
    rows = []
    for classifier in classifiers or list_classifiers():
        cfg = apply_overrides(RunConfig(), [f"model.backbone={backbone}", f"model.classifier={classifier}",
                                            f"model.neck={neck}", f"model.embed_dim={embed_dim}"])
        for count in classes:
            torch.manual_seed(0)
            metrics, _ = measure_model(build_segmentor(cfg, count, 255), settings, torch.device("cpu"), threads)
            rows.append({"classifier": classifier, "classes": count, "head_params": metrics[keys.params("head")],
                         "head_params_inference": metrics[keys.params("head_inference")],
                         "head_nonlearnable": metrics[keys.params("head_nonlearnable")],
                         "head_gflops": metrics.get(keys.gflops("head"), 0.0), "gflops": metrics[keys.gflops()],
                         "latency_p50_ms": metrics[keys.latency(1)]})
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
    plt = pyplot()
    figure, panels = plt.subplots(1, 3, figsize=(13, 3.6))
    for classifier in dict.fromkeys(r["classifier"] for r in rows):
        mine = [r for r in rows if r["classifier"] == classifier]
        for axes, column in zip(panels, ("head_params", "head_gflops", "latency_p50_ms")):
            axes.plot([r["classes"] for r in mine], [r[column] for r in mine], marker="o", label=classifier)
    for axes, label in zip(panels, ("head parameters", "head GFLOPs per image", "latency p50 (ms)")):
        axes.set(xlabel="classes", ylabel=label)
    panels[0].legend(fontsize=7)
    return png_bytes(figure)
