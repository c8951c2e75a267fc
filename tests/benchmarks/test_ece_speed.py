"""ECENet head cost next to softmax on the same features, run on demand:
``python -m pytest tests/benchmarks -s -k ece``. Ratios are measured in one process."""

import torch
from timing import interleaved_medians

from backbones import Features
from classifiers import build_classifier


def test_ece_head_forward_against_softmax(benchmark):
    """C=150, D=256, a 512x512 input's pyramid (strides 4-32), batch 1, 2 threads; both presets."""
    torch.manual_seed(0)
    pyramid = [torch.randn(1, 256, 128 >> i, 128 >> i) for i in range(4)]
    features = Features(pyramid[0], pyramid, (512, 512))
    targets = torch.randint(0, 150, (1, 512, 512))
    heads = {name: build_classifier(name, num_classes=150, in_channels=256) for name in ("softmax", "ece")}
    heads["ece_paper"] = build_classifier("ece", num_classes=150, in_channels=256, preset="paper")
    params = {name: sum(p.numel() for p in h.parameters()) for name, h in heads.items()}

    def infer(head):
        with torch.inference_mode():
            head.eval()(features)

    candidates = {}
    for name, head in heads.items():
        candidates[f"{name}_infer"] = lambda head=head: infer(head)
        candidates[f"{name}_train"] = lambda head=head: head.train()(features, targets)
    median = interleaved_medians(candidates, rounds=5)
    ratios = {f"{name}_{mode}_over_softmax": median[f"{name}_{mode}"] / median[f"softmax_{mode}"]
              for name in ("ece", "ece_paper") for mode in ("infer", "train")}
    benchmark.extra_info.update(params=params, **{f"{k}_s": v for k, v in median.items()}, **ratios)
    print(f"\nparams {params}; " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in median.items())
          + "; " + ", ".join(f"{k} {v:.1f}x" for k, v in ratios.items()))
    with torch.inference_mode():
        logits = heads["ece"].eval()(features).logits
    assert logits.shape == (1, 150, 128, 128) and torch.isfinite(logits).all()
    with torch.inference_mode():
        benchmark.pedantic(heads["ece"].eval(), args=(features,), rounds=3, iterations=1)
