"""The measurement itself, run on demand: ``python -m pytest tests/benchmarks -s -k measure``.

Reports what issue 6 asks to know about the latency numbers: how well three back-to-back
measurements of the same model agree (p50 spread) and how the harness's p50 compares with
``torch.utils.benchmark.Timer`` on the same model. Printed and kept in ``extra_info``;
nothing here asserts a time.
"""

import torch
from torch.utils import benchmark as torch_benchmark

from harness.config import MeasureConfig, RunConfig, apply_overrides
from harness.measure import measure_latency, measure_model
from harness.modeling import build_segmentor

CPU = torch.device("cpu")


def _model():
    cfg = apply_overrides(RunConfig(), ["model.backbone=resnet18"])
    torch.manual_seed(0)
    return build_segmentor(cfg, 150, 255).eval()


def test_latency_repeatability_and_agreement_with_torch_timer(benchmark):
    """ResNet-18 + mlp neck + softmax, C=150, 256x256, batch 1, 2 threads (pinned by conftest)."""
    model = _model()
    settings = MeasureConfig(image_size=256, warmup=5, iters=30)
    p50s = [measure_latency(model, settings, CPU)["latency/bs1/p50_ms"] for _ in range(3)]
    spread = (max(p50s) - min(p50s)) / min(p50s)
    images = torch.rand(1, 3, 256, 256) * 255
    with torch.inference_mode():
        timer = torch_benchmark.Timer("model.predict(images)", globals={"model": model, "images": images},
                                      num_threads=torch.get_num_threads())
        reference_ms = timer.blocked_autorange(min_run_time=3).median * 1e3
    ours = sorted(p50s)[1]
    agreement = ours / reference_ms
    benchmark.extra_info.update(p50_ms=p50s, spread=spread, torch_timer_median_ms=reference_ms, ratio=agreement)
    print(f"\nthree p50s {', '.join(f'{p:.1f}' for p in p50s)} ms (spread {spread:.1%}); "
          f"torch.utils.benchmark.Timer median {reference_ms:.1f} ms; harness / Timer {agreement:.3f}")
    assert all(p > 0 for p in p50s) and reference_ms > 0
    benchmark.pedantic(measure_latency, args=(model, MeasureConfig(image_size=256, warmup=1, iters=5), CPU),
                       rounds=1, iterations=1)


def test_measure_model(benchmark):
    """The whole measurement (FLOPs, parameters, latency) of the default cell's model at 512x512."""
    model = _model()
    metrics, record = benchmark.pedantic(measure_model, args=(model, MeasureConfig(iters=5, warmup=1), CPU, 2),
                                         rounds=1, iterations=1)
    assert metrics["gflops/total"] > 0 and record["machine"]["threads"] == 2
