import pytest
import torch

from backbones import Features
from classifiers import build_classifier
from classifiers.ece import diversity_loss, pooling_sizes
from harness.errors import InputError


def _features(batch=2, dim=32, finest=12, stages=4):
    pyramid = [torch.randn(batch, dim, max(1, finest >> i), max(1, finest >> i)) for i in range(stages)]
    return Features(pyramid[0], pyramid, (finest * 4, finest * 4))


@pytest.mark.parametrize("num_classes, finest", [(2, 8), (11, 12), (150, 16), (19, 10)])
def test_output_shapes_and_finite_named_losses(num_classes, finest):
    head = build_classifier("ece", num_classes=num_classes, in_channels=32)
    features = _features(finest=finest)
    inference = head.eval()(features)
    assert inference.logits.shape == (2, num_classes, finest, finest) and inference.losses == {}
    targets = torch.randint(0, num_classes, (2, finest * 4, finest * 4))
    targets[:, :3] = 255
    losses = head.train()(features, targets).losses
    assert set(losses) == {"ce", "focal", "dice", "div"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())


def test_every_parameter_gets_a_gradient():
    head = build_classifier("ece", num_classes=5, in_channels=32).train()
    losses = head(_features(), torch.randint(0, 5, (2, 48, 48))).losses
    sum(losses.values()).backward()
    assert [n for n, p in head.named_parameters() if p.grad is None] == []
    # Shifts feeding only into BatchNorm (the intrinsic branch's BN bias) get an exactly-zero gradient; all else moves.
    frozen = [n for n, p in head.named_parameters() if not p.grad.abs().sum() > 0]
    assert all(n.endswith("intrinsic.1.bias") for n in frozen)


@pytest.mark.parametrize("num_classes, alpha, largest", [(150, 1.0, 13), (59, 2**0.5, 11), (19, 3.0, 15), (11, 1.0, 5),
                                                         (4, 1.0, 3)])
def test_pooling_sizes_follow_alpha_sqrt_n_rounded_up_to_odd(num_classes, alpha, largest):
    sizes = pooling_sizes(num_classes, alpha)
    assert max(sizes) == max(largest, 6) and largest in sizes
    assert set(sizes) >= {1, 2, 3, 6} and list(sizes) == sorted(set(sizes))


def test_diversity_loss_is_low_when_channels_cover_distinct_pixels():
    distinct = torch.full((1, 4, 2, 2), -20.0)
    for c in range(4):
        distinct[0, c, c // 2, c % 2] = 20.0  # each channel peaks on its own pixel
    same = torch.zeros(1, 4, 2, 2)
    same[0, :, 0, 0] = 20.0  # every channel peaks on the same pixel
    assert diversity_loss(distinct).item() == pytest.approx(0.0, abs=1e-6)
    assert diversity_loss(same).item() == pytest.approx(0.75, abs=1e-6)


def test_inference_runs_no_training_only_work(monkeypatch):
    import classifiers.ece as ece

    calls = []
    monkeypatch.setattr(ece, "diversity_loss", lambda d: calls.append("div") or d.sum() * 0)
    monkeypatch.setattr(ece, "_focal_and_dice", lambda *a: calls.append("mask") or (torch.tensor(0.0),) * 2)
    head = build_classifier("ece", num_classes=3, in_channels=32).eval()
    head(_features())
    assert calls == []
    head(_features(), torch.randint(0, 3, (2, 48, 48)))
    assert calls == ["mask"] + ["div"] * 4  # one diversity term per stage


def test_options_change_the_model():
    features = _features()
    torch.manual_seed(0)
    gated = build_classifier("ece", num_classes=3, in_channels=32).eval()
    torch.manual_seed(0)
    inverted = build_classifier("ece", num_classes=3, in_channels=32, inverted_attention=True).eval()
    assert not torch.allclose(gated(features).logits, inverted(features).logits)
    plus = build_classifier("ece", num_classes=3, in_channels=32, updater="plus")
    count = lambda h: sum(p.numel() for p in h.parameters())  # noqa: E731
    assert count(gated) - count(plus) == 3 * (3 * (32 * 32 + 32) + 2 * 32)  # phi3, phi4, psi1 (+LN) per stage


@pytest.mark.parametrize("kwargs, message", [({"updater": "sum"}, "updater='sum'"),
                                             ({"num_heads": 5}, "divisible by num_heads=5")])
def test_bad_options_are_rejected(kwargs, message):
    with pytest.raises(InputError, match=message):
        build_classifier("ece", num_classes=3, in_channels=32, **kwargs)


def test_pyramid_depth_mismatch_names_the_setting():
    head = build_classifier("ece", num_classes=3, in_channels=32)
    with pytest.raises(InputError, match="num_stages"):
        head(_features(stages=3))
