"""ECENet head cost next to softmax on the same features, run on demand:
``python -m pytest tests/benchmarks -s -k ece``. Ratios are measured in one process."""

import statistics
import time

import torch

from backbones import Features
from classifiers import build_classifier


def test_ece_head_forward_against_softmax(benchmark):
    """C=150, D=256, a 512x512 input's pyramid (strides 4-32), batch 1, 2 threads."""
    torch.manual_seed(0)
    pyramid = [torch.randn(1, 256, 128 >> i, 128 >> i) for i in range(4)]
    features = Features(pyramid[0], pyramid, (512, 512))
    targets = torch.randint(0, 150, (1, 512, 512))
    heads = {name: build_classifier(name, num_classes=150, in_channels=256) for name in ("softmax", "ece")}
    params = {name: sum(p.numel() for p in h.parameters()) for name, h in heads.items()}
    times = {f"{n}_{mode}": [] for n in heads for mode in ("infer", "train")}
    for round_ in range(6):  # the first round warms up
        for name, head in heads.items():
            with torch.inference_mode():
                began = time.perf_counter()
                head.eval()(features)
                elapsed = time.perf_counter() - began
            if round_:
                times[f"{name}_infer"].append(elapsed)
            began = time.perf_counter()
            head.train()(features, targets)
            if round_:
                times[f"{name}_train"].append(time.perf_counter() - began)
    median = {k: statistics.median(v) for k, v in times.items()}
    ratios = {mode: median[f"ece_{mode}"] / median[f"softmax_{mode}"] for mode in ("infer", "train")}
    benchmark.extra_info.update(params=params, **{f"{k}_s": v for k, v in median.items()},
                                **{f"ece_over_softmax_{k}": v for k, v in ratios.items()})
    print(f"\nparams {params}; " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in median.items())
          + f"; ece/softmax inference {ratios['infer']:.1f}x, training forward {ratios['train']:.1f}x")
    with torch.inference_mode():
        logits = heads["ece"].eval()(features).logits
    assert logits.shape == (1, 150, 128, 128) and torch.isfinite(logits).all()
    with torch.inference_mode():
        benchmark.pedantic(heads["ece"].eval(), args=(features,), rounds=3, iterations=1)
