"""The table ``segheads measure`` prints: parameters, FLOPs, latency, throughput, memory, efficiency."""

from __future__ import annotations

from harness import metric_keys as keys
from harness.config import RunConfig

_PARTS = ("total", "backbone", "neck", "head", "head_inference", "head_training_only", "auxiliary", "inference",
          "training_only", "head_nonlearnable")


def format_measurement(cfg: RunConfig, num_classes: int, metrics: dict, record: dict) -> str:
    """The table ``segheads measure`` prints."""
    machine, settings = record["machine"], record["settings"]
    mega = {part: metrics[keys.params(part)] / 1e6 for part in _PARTS}
    lines = [
        f"{cfg.model.classifier} on {cfg.model.backbone} + {cfg.model.neck} neck, C={num_classes}, "
        f"D={cfg.model.embed_dim}, {settings['image_size']}x{settings['image_size']}, {settings['dtype']}"
        f"{', channels_last' if settings['channels_last'] else ''}{', compiled' if settings['compile'] else ''}",
        f"machine: {machine['device_name']} ({machine['device']}, {machine['threads']} threads), torch {machine['torch']}; "
        f"timer {record['timer']}, memory {record['memory']}",
        f"params (M): total {mega['total']:.3f} = backbone {mega['backbone']:.3f} + neck {mega['neck']:.3f} "
        f"+ head {mega['head']:.3f} (inference {mega['head_inference']:.3f}, training-only "
        f"{mega['head_training_only']:.3f}) + auxiliary head {mega['auxiliary']:.3f}; at inference "
        f"{mega['inference']:.3f} (without the {mega['training_only']:.3f} training-only); non-learnable head state "
        f"{mega['head_nonlearnable']:.3f}",
        "FLOPs per image (GFLOPs / GMACs): " + ", ".join(
            f"{part} {metrics[keys.gflops(part)]:.3f} / {metrics[keys.gmacs(part)]:.3f}"
            for part in ("total", "backbone", "neck", "head", "matmul", "layers_only") if keys.gflops(part) in metrics),
        f"{'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'mean ms':>9} {'std ms':>8} {'images/s':>9} "
        f"{'peak MB':>8} {'GFLOP/s':>8} {'of matmul':>9}",
    ]
    for requested in settings["batch_sizes"]:
        batch = int(metrics.get(keys.oom_batch(requested), requested))
        if batch != requested:
            lines.append(f"{requested:>5} out of memory; measured at batch {batch} instead")
        lat = {q: metrics[keys.latency(batch, q)] for q in keys.LATENCY_STATS}
        lines.append(f"{batch:>5} {lat['p50']:>9.2f} {lat['p90']:>9.2f} {lat['p99']:>9.2f} {lat['mean']:>9.2f} "
                     f"{lat['std']:>8.2f} {metrics[keys.throughput(batch)]:>9.2f} "
                     f"{metrics[keys.peak_memory(batch)]:>8.1f} {metrics[keys.achieved(batch)]:>8.1f} "
                     f"{metrics[keys.fraction_of_matmul(batch)]:>9.1%}")
    lines.append(f"machine matmul: {metrics[keys.MACHINE_MATMUL]:.1f} GFLOP/s "
                 f"({settings['dtype']}, {machine['threads']} threads)")
    return "\n".join(lines)
