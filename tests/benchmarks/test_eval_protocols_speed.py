"""What each test-time protocol costs, run on demand: ``python -m pytest tests/benchmarks -s -k protocols``.

One ADE20K-sized image (512x683), ResNet-18 + mlp neck + softmax over 150 classes, 2 threads
(conftest pins them): ``predict_logits`` under whole-image inference at native size, the
papers' short-side resize (512, long side <= 2048; a no-op at this size) and 640 (ECENet's Swin
rows), sliding 512x512 windows every 341, and 6 scales x flip (ECENet's ms). Medians of
interleaved rounds, as ratios to whole-image inference, printed and kept in ``extra_info``;
nothing is asserted about time.
"""

import timing
import torch

from harness.config import EvalConfig, RunConfig, apply_overrides
from harness.evaluation import predict_logits
from harness.modeling import build_segmentor

_PROTOCOLS = {
    "whole": EvalConfig(),
    "short side 512": EvalConfig(short_side=512, max_long_side=2048),
    "short side 640": EvalConfig(short_side=640, max_long_side=2560),
    "slide 512 stride 341": EvalConfig(mode="slide", crop_size=[512, 512], stride=[341, 341]),
    "ms+flip (6 scales x 2)": EvalConfig(short_side=512, max_long_side=2048, scales=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75],
                                        flip=True),
}


def test_protocol_costs_on_an_ade_sized_image(benchmark):
    torch.manual_seed(0)
    model = build_segmentor(apply_overrides(RunConfig(), ["model.backbone=resnet18"]), 150, 255).eval()
    image = torch.randint(0, 256, (3, 512, 683), dtype=torch.uint8)
    medians = timing.interleaved_medians({name: (lambda p=p: predict_logits(model, image, p)) for name, p in _PROTOCOLS.items()},
                                         rounds=3)
    whole = medians["whole"]
    benchmark.extra_info.update({name: {"seconds": s, "ratio": s / whole} for name, s in medians.items()})
    print("\n" + "\n".join(f"{name:<24} {s * 1e3:>8.0f} ms  {s / whole:>5.1f}x" for name, s in medians.items()))
    benchmark.pedantic(lambda: predict_logits(model, image, _PROTOCOLS["whole"]), rounds=1, iterations=1)
