import pytest
import torch
import torch.nn.functional as F

from backbones import Features
from classifiers import build_classifier
from classifiers.ece import (
    ClassUpdater,
    FeatureReconstruction,
    GhostUpsample,
    SemanticsAttention,
    diversity_loss,
    pooling_sizes,
)
from harness.config import RunConfig, apply_overrides
from harness.errors import InputError
from harness.modeling import build_segmentor


def _features(batch=2, dim=32, finest=12, stages=4):
    pyramid = [torch.randn(batch, dim, max(1, finest >> i), max(1, finest >> i)) for i in range(stages)]
    return Features(pyramid[0], pyramid, (finest * 4, finest * 4))


@pytest.mark.parametrize("preset", ["code", "paper"])
@pytest.mark.parametrize("num_classes, finest", [(2, 8), (11, 12), (150, 16), (19, 10)])
def test_output_shapes_and_finite_named_losses(num_classes, finest, preset):
    head = build_classifier("ece", num_classes=num_classes, in_channels=32, preset=preset)
    features = _features(finest=finest)
    inference = head.eval()(features)
    assert inference.logits.shape == (2, num_classes, finest, finest) and inference.losses == {}
    targets = torch.randint(0, num_classes, (2, finest * 4, finest * 4))
    targets[:, :3] = 255
    losses = head.train()(features, targets).losses
    assert set(losses) == {"ce", "focal", "dice", "div"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())


@pytest.mark.parametrize("preset", ["code", "paper"])
def test_every_parameter_gets_a_gradient(preset):
    head = build_classifier("ece", num_classes=5, in_channels=32, preset=preset).train()
    losses = head(_features(), torch.randint(0, 5, (2, 48, 48))).losses
    sum(losses.values()).backward()
    assert [n for n, p in head.named_parameters() if p.grad is None] == []
    # Shifts feeding only into a BatchNorm (the cheap conv's bias, the intrinsic BN's shift under
    # the paper's sigmoid SE) get an exactly-zero gradient; all else moves.
    frozen = [n for n, p in head.named_parameters() if not p.grad.abs().sum() > 0]
    assert all(n.endswith(("intrinsic.1.bias", "cheap.0.bias")) for n in frozen)


@pytest.mark.parametrize("num_classes, alpha, largest", [(150, 1.0, 13), (59, 2**0.5, 11), (19, 3.0, 13), (11, 1.0, 3),
                                                         (4, 1.0, 3)])
def test_pooling_sizes_follow_the_code_int_alpha_sqrt_n_made_odd(num_classes, alpha, largest):
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
    gated = build_classifier("ece", num_classes=3, in_channels=32, preset="paper").eval()
    torch.manual_seed(0)
    inverted = build_classifier("ece", num_classes=3, in_channels=32, preset="paper", inverted_attention=True).eval()
    assert not torch.allclose(gated(features).logits, inverted(features).logits)
    plus = build_classifier("ece", num_classes=3, in_channels=32, preset="paper", updater="plus")
    count = lambda h: sum(p.numel() for p in h.parameters())  # noqa: E731
    assert count(gated) - count(plus) == 3 * (3 * (32 * 32 + 32) + 2 * 32)  # phi3, phi4, psi1 (+LN) per stage


@pytest.mark.parametrize("kwargs, message", [({"updater": "sum"}, "updater='sum'"),
                                             ({"num_heads": 5}, "divisible by num_heads=5"),
                                             ({"preset": "port"}, "preset='port'"),
                                             ({"aggregation": "sum"}, "aggregation='sum'"),
                                             ({"stage_channels": [8, 16]}, "expected num_stages=4")])
def test_bad_options_are_rejected(kwargs, message):
    with pytest.raises(InputError, match=message):
        build_classifier("ece", num_classes=3, in_channels=32, **kwargs)


def test_pyramid_depth_mismatch_names_the_setting():
    head = build_classifier("ece", num_classes=3, in_channels=32)
    with pytest.raises(InputError, match="num_stages"):
        head(_features(stages=3))


def _attention_by_hand(layer, pixels, classes):
    """Eq. 6-7 as the code computes them, one head: S = q k^T / sqrt(d) with q from the depthwise
    + pointwise convs of the normed map and k, v from one Linear; weights softmax(-S)."""
    b, d, h, w = pixels.shape
    tokens = pixels.flatten(2).transpose(1, 2)
    normed = layer.norm_pixels(tokens).transpose(1, 2).reshape(b, d, h, w)
    depthwise, pointwise = layer.query
    q = F.conv2d(F.conv2d(normed, depthwise.weight, depthwise.bias, padding=1, groups=d), pointwise.weight,
                 pointwise.bias).flatten(2).transpose(1, 2)
    k, v = (layer.norm_classes(classes) @ layer.key_value.weight.t()).chunk(2, dim=-1)
    similarity = q @ k.transpose(1, 2) / d**0.5
    weights = (-similarity).softmax(-1)
    return similarity, weights, tokens + layer.out(weights @ v)


def test_code_attention_weights_sum_to_one_and_favour_dissimilar_classes():
    torch.manual_seed(1)
    layer = SemanticsAttention(16, 1, 4.0, inverted=True, query_projection="separable").eval()
    pixels, classes = torch.randn(1, 16, 3, 4), torch.randn(1, 5, 16)
    captured = {}
    layer.out.register_forward_hook(lambda m, args, out: captured.update(mixed=args[0]))
    out, masks = layer(pixels, classes)
    similarity, weights, attended = _attention_by_hand(layer, pixels, classes)
    torch.testing.assert_close(masks.flatten(2).transpose(1, 2), similarity)  # the masks keep +S
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 12))
    assert torch.equal(weights.argmax(-1), similarity.argmin(-1))  # the least similar class weighs most
    torch.testing.assert_close(captured["mixed"] @ layer.out.weight.t() + layer.out.bias + pixels.flatten(2).transpose(1, 2),
                               attended)
    assert layer.key_value.bias is None and isinstance(layer.query[0], torch.nn.Conv2d) and layer.query[0].groups == 16


def test_code_feature_reconstruction_by_hand():
    torch.manual_seed(2)
    fr = FeatureReconstruction(12, 8, "code").eval()
    x = torch.randn(2, 12, 5, 5)
    out, diverse = fr(x)
    intrinsic = fr.intrinsic(x)
    cheap = fr.cheap(intrinsic)
    first, relu, second = fr.excite
    scale = second(relu(first(cheap.mean((2, 3)))))  # SE without sigmoid, reduction 2, no bias
    assert (first.out_features, first.bias, second.bias) == (3, None, None)
    torch.testing.assert_close(diverse, cheap * scale[:, :, None, None])
    conv, norm, lateral = fr.project
    mixed = conv(torch.cat([diverse, intrinsic], 1)).permute(0, 2, 3, 1)
    expected = lateral(F.layer_norm(mixed, (12,), norm.weight, norm.bias).permute(0, 3, 1, 2))
    torch.testing.assert_close(out, expected)
    assert conv.bias is None and lateral.bias is None and lateral.out_channels == 8


def test_code_head_reconstructs_the_backbone_stages_through_the_stages_neck():
    cfg = apply_overrides(RunConfig(), ["model.backbone=resnet10t", "model.neck=stages", "model.classifier=ece",
                                        "model.embed_dim=32"])
    model = build_segmentor(cfg, 11, 255)
    widths = [fr.intrinsic[0].in_channels for fr in model.classifier.reconstruct]
    assert widths == model.backbone.channels and sum(p.numel() for p in model.neck.parameters()) == 0
    assert model.predict(torch.rand(1, 3, 64, 64) * 255).shape == (1, 11, 64, 64)
    with pytest.raises(InputError, match="neck 'stages' passes the backbone's stages through"):
        build_segmentor(apply_overrides(cfg, ["model.classifier=softmax"]), 11, 255)


def test_code_intermediate_masks_aggregation_and_class_probabilities():
    torch.manual_seed(3)
    head = build_classifier("ece", num_classes=5, in_channels=16).eval()
    grouped, to_classes = head.intermediate_masks
    assert (grouped.groups, grouped.bias, to_classes.bias) == (4, None, None)  # Eq. 4, grouped and bias-free
    conv, dropout, classifier = head.fuse
    assert (conv[0].kernel_size, conv[0].in_channels, conv[0].out_channels) == ((3, 3), 64, 16)
    assert isinstance(conv[1], torch.nn.BatchNorm2d) and dropout.p == 0.1 and classifier.out_channels == 5
    classes, summed = torch.randn(2, 5, 16), torch.randn(2, 5, 3, 3)
    p = head.class_logits(classes).softmax(-1)  # Linear(D, N)
    expected = torch.stack([p[:, k, k, None, None] * summed[:, k].sigmoid() for k in range(5)], 1)
    torch.testing.assert_close(head._class_masks(classes, summed), expected)


def test_ghost_upsampling_doubles_per_step_with_pixel_shuffle():
    up = GhostUpsample(8, 2).eval()
    x = torch.randn(1, 8, 3, 3)
    expected = x
    for step in up.steps:  # primary 1x1 to 2D, cheap depthwise 3x3, concat to 4D, pixel shuffle back to D
        primary = step["primary"](expected)
        expected = F.pixel_shuffle(torch.cat([primary, step["cheap"](primary)], 1), 2)
    assert expected.shape == (1, 8, 12, 12)
    torch.testing.assert_close(up(x), expected)
    assert (up.steps[0]["primary"][0].out_channels, up.steps[0]["cheap"][0].groups) == (16, 16)


def test_code_updater_ends_with_fc_layernorm_relu():
    torch.manual_seed(4)
    updater = ClassUpdater(8, gated=True, fc=True)
    new, previous = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    gated = torch.sigmoid(updater.psi1(updater.phi3(new) * updater.phi4(previous))) * updater.psi2(new) + previous
    fc, norm, _ = updater.fc
    torch.testing.assert_close(updater(new, previous), F.layer_norm(fc(gated), (8,), norm.weight, norm.bias).clamp(min=0))


@pytest.mark.parametrize("supervised, stages", [("coarse", 3), ("all", 4)])
def test_mask_losses_weights_and_which_masks_they_supervise(supervised, stages, monkeypatch):
    import classifiers.ece as ece

    torch.manual_seed(5)
    head = build_classifier("ece", num_classes=3, in_channels=32, supervised_masks=supervised).eval()
    masks = []
    head.intermediate_masks.register_forward_hook(lambda m, a, out: masks.append(out))
    for layer in reversed(head.attend):  # coarse to fine, as they run
        layer.register_forward_hook(lambda m, a, out: masks.append(out[1]))
    real, seen = ece._focal_and_dice, []
    monkeypatch.setattr(ece, "_focal_and_dice", lambda m, *rest: seen.append(m) or real(m, *rest))
    features, targets = _features(), torch.randint(0, 3, (2, 48, 48))
    losses = head(features, targets).losses
    size = features.pyramid[0].shape[-2:]
    expected = sum(F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in masks[:stages])
    torch.testing.assert_close(seen[0], expected)
    unit = build_classifier("ece", num_classes=3, in_channels=32, supervised_masks=supervised, focal_weight=1.0,
                            dice_weight=1.0).eval()
    unit.load_state_dict(head.state_dict())
    plain = unit(features, targets).losses
    torch.testing.assert_close(losses["focal"], 5 * plain["focal"])
    torch.testing.assert_close(losses["dice"], 2 * plain["dice"])
