"""The table ``segheads measure`` prints: parameters, FLOPs, latency, throughput, memory, efficiency."""

from __future__ import annotations

from harness.config import RunConfig


def format_measurement(cfg: RunConfig, num_classes: int, metrics: dict, record: dict) -> str:
    """The table ``segheads measure`` prints."""
    machine, settings = record["machine"], record["settings"]
    mega = {k.split("/", 1)[1]: v / 1e6 for k, v in metrics.items() if k.startswith("params/")}
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
            f"{part} {metrics[f'gflops/{part}']:.3f} / {metrics[f'gmacs/{part}']:.3f}"
            for part in ("total", "backbone", "neck", "head", "matmul", "layers_only") if f"gflops/{part}" in metrics),
        f"{'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'mean ms':>9} {'std ms':>8} {'images/s':>9} "
        f"{'peak MB':>8} {'GFLOP/s':>8} {'of matmul':>9}",
    ]
    for requested in settings["batch_sizes"]:
        batch = int(metrics.get(f"oom/bs{requested}/measured_batch", requested))
        if batch != requested:
            lines.append(f"{requested:>5} out of memory; measured at batch {batch} instead")
        lat = {q: metrics[f"latency/bs{batch}/{q}_ms"] for q in ("p50", "p90", "p99", "mean", "std")}
        lines.append(f"{batch:>5} {lat['p50']:>9.2f} {lat['p90']:>9.2f} {lat['p99']:>9.2f} {lat['mean']:>9.2f} "
                     f"{lat['std']:>8.2f} {metrics[f'throughput/bs{batch}/images_per_s']:>9.2f} "
                     f"{metrics[f'memory/bs{batch}/peak_mb']:>8.1f} "
                     f"{metrics[f'efficiency/bs{batch}/achieved_gflops_per_s']:>8.1f} "
                     f"{metrics[f'efficiency/bs{batch}/fraction_of_matmul']:>9.1%}")
    lines.append(f"machine matmul: {metrics['efficiency/machine_matmul_gflops_per_s']:.1f} GFLOP/s "
                 f"({settings['dtype']}, {machine['threads']} threads)")
    return "\n".join(lines)
