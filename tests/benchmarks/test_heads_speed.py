"""Every registered head, inference and training step, as pytest-benchmark entries, run on
demand: ``python -m pytest tests/benchmarks -k heads``. Save a baseline with
``--benchmark-save=NAME`` and compare a later run with ``--benchmark-compare=NAME
--benchmark-compare-fail=median:10%`` (README, "Benchmarks")."""

import pytest
import torch

from backbones import Features
from classifiers import build_classifier, list_classifiers

CLASSES, DIM, SIZE, BATCH = 150, 256, 256, 2  # features of a 256x256 input: stride 4 to 32


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(0)
    pyramid = [torch.randn(BATCH, DIM, SIZE // 4 >> i, SIZE // 4 >> i, generator=gen) for i in range(4)]
    targets = torch.randint(0, CLASSES, (BATCH, SIZE, SIZE), generator=gen)
    return Features(pyramid[0], pyramid, (SIZE, SIZE)), targets


def _head(name):
    torch.manual_seed(0)
    return build_classifier(name, num_classes=CLASSES, in_channels=DIM)


@pytest.mark.parametrize("name", list_classifiers())
def test_head_inference(benchmark, batch, name):
    features, _ = batch
    head = _head(name).eval()
    with torch.inference_mode():
        logits = benchmark.pedantic(lambda: head(features).logits, rounds=5, warmup_rounds=1, iterations=1)
    assert logits.shape == (BATCH, CLASSES, SIZE // 4, SIZE // 4) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list_classifiers())
def test_head_training_step(benchmark, batch, name):
    features, targets = batch
    head = _head(name).train()
    pixel = features.pixel.clone().requires_grad_()
    step_features = Features(pixel, [pixel, *features.pyramid[1:]], features.image_size)

    def step():
        head.zero_grad(set_to_none=True)
        pixel.grad = None
        losses = head(step_features, targets).losses
        total = sum(losses.values())
        total.backward()
        return total

    total = benchmark.pedantic(step, rounds=5, warmup_rounds=1, iterations=1)
    assert torch.isfinite(total) and pixel.grad is not None and torch.isfinite(pixel.grad).all()
