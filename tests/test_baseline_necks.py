"""The papers' baseline decoders (``backbones/necks/mmseg.py``) and MMSegmentation's
auxiliary FCN head (``harness.modeling.AuxiliaryFCNHead``): structure by exact parameter
counts, strides, the auxiliary loss, that it never runs at inference, and its accounting."""

import pytest
import torch
import torch.nn.functional as F

from backbones import build_backbone, build_neck
from harness.config import RunConfig, apply_overrides, config_hash
from harness.errors import InputError
from harness.measure import count_parameters
from harness.modeling import build_segmentor

_TINY = ["model.backbone=test_convnext", "model.embed_dim=16"]


def _bn_conv(cin, cout, kernel):
    """MMSegmentation's ConvModule: a bias-free conv and a BatchNorm (weight and bias)."""
    return cin * cout * kernel * kernel + 2 * cout


def _numel(module):
    return sum(p.numel() for p in module.parameters())


def test_fcn_is_two_3x3_convs_then_a_3x3_fuse_with_the_input_at_the_last_stage_s_stride():
    backbone = build_backbone("test_convnext")
    last, width = backbone.channels[-1], 24
    neck = build_neck("fcn", backbone.channels, backbone.strides, embed_dim=width)
    assert _numel(neck) == _bn_conv(last, width, 3) + _bn_conv(width, width, 3) + _bn_conv(last + width, width, 3)
    features = neck(backbone(torch.randn(2, 3, 64, 96)), (64, 96))
    assert features.pixel.shape == (2, width, 64 // backbone.strides[-1], 96 // backbone.strides[-1])
    assert [p.shape for p in features.pyramid] == [features.pixel.shape]


def test_upernet_is_a_pyramid_pooling_module_and_an_fpn_fused_at_stride_4():
    backbone = build_backbone("test_convnext")
    channels, width = backbone.channels, 16
    neck = build_neck("upernet", channels, backbone.strides, embed_dim=width)
    expected = 4 * _bn_conv(channels[-1], width, 1) + _bn_conv(channels[-1] + 4 * width, width, 3)  # PPM 1/2/3/6
    expected += sum(_bn_conv(c, width, 1) + _bn_conv(width, width, 3) for c in channels[:-1])  # laterals, outputs
    expected += _bn_conv(4 * width, width, 3)  # fpn_bottleneck
    assert _numel(neck) == expected
    features = neck(backbone(torch.randn(2, 3, 64, 96)), (64, 96))
    assert features.pixel.shape == (2, width, 16, 24)
    assert [tuple(p.shape[-2:]) for p in features.pyramid] == [(64 // s, 96 // s) for s in backbone.strides]


def test_deeplabv3plus_is_separable_aspp_then_a_decoder_on_the_stride_4_stage():
    backbone = build_backbone("test_convnext")
    channels, width = backbone.channels, 16
    neck = build_neck("deeplabv3plus", channels, backbone.strides, embed_dim=width)

    def separable(cin, cout):
        return cin * 9 + 2 * cin + _bn_conv(cin, cout, 1)

    last = channels[-1]
    expected = 2 * _bn_conv(last, width, 1) + 3 * separable(last, width) + _bn_conv(5 * width, width, 3)  # ASPP
    expected += _bn_conv(channels[0], 48, 1) + separable(width + 48, width) + separable(width, width)  # decoder
    assert _numel(neck) == expected
    features = neck(backbone(torch.randn(2, 3, 64, 96)), (64, 96))
    assert features.pixel.shape == (2, width, 64 // backbone.strides[0], 96 // backbone.strides[0])


def test_segformer_projects_each_stage_with_a_conv_module_and_fuses_at_the_first_stage_s_size():
    backbone = build_backbone("test_convnext")
    channels, width = backbone.channels, 16
    neck = build_neck("segformer", channels, backbone.strides, embed_dim=width)
    assert _numel(neck) == sum(_bn_conv(c, width, 1) for c in channels) + _bn_conv(4 * width, width, 1)
    features = neck(backbone(torch.randn(2, 3, 64, 96)), (64, 96))
    assert features.pixel.shape == (2, width, 16, 24) and [p.shape[1] for p in features.pyramid] == [width] * 4


def test_hrnet_fcn_is_hrnet_concat_without_dropout_even_in_training():
    """MMSegmentation's fcn_hr18.py: dropout_ratio=-1, so the training forward is the eval one
    but for BatchNorm's batch statistics."""
    backbone = build_backbone("test_convnext")
    concat = build_neck("hrnet_concat", backbone.channels, backbone.strides, embed_dim=16)
    fcn = build_neck("hrnet_fcn", backbone.channels, backbone.strides, embed_dim=16)
    fcn.load_state_dict(concat.state_dict())
    feats = backbone(torch.randn(2, 3, 64, 64))
    assert not any(isinstance(m, torch.nn.Dropout2d) for m in fcn.modules())
    assert torch.equal(fcn.train()(feats, (64, 64)).pixel, concat.train()(feats, (64, 64)).pixel)


def test_ocr_gathers_class_centres_from_its_own_regions_and_supervises_them():
    backbone = build_backbone("test_convnext")
    channels, width, ocr, classes = backbone.channels, 16, 8, 5
    neck = build_neck("ocr", channels, backbone.strides, embed_dim=width, num_classes=classes, ocr_channels=ocr).eval()
    concat = sum(channels)
    expected = _bn_conv(concat, concat, 1) + concat * classes + classes + _bn_conv(concat, width, 3)  # regions, bottleneck
    expected += 2 * (_bn_conv(width, ocr, 1) + _bn_conv(ocr, ocr, 1)) + _bn_conv(width, ocr, 1)  # query, key, value
    expected += _bn_conv(ocr, width, 1) + _bn_conv(2 * width, width, 1)  # out, fuse
    assert _numel(neck) == expected
    feats = backbone(torch.randn(2, 3, 64, 64))
    features = neck(feats, (64, 64))
    assert features.pixel.shape == (2, width, 16, 16) and features.auxiliary_logits.shape == (2, classes, 16, 16)
    with torch.no_grad():  # the regions steer the context: other regions, other pixels
        neck.regions[1].weight.mul_(torch.randn_like(neck.regions[1].weight) * 5)
    assert not torch.allclose(neck(feats, (64, 64)).pixel, features.pixel)

    model = build_segmentor(apply_overrides(RunConfig(), [*_TINY, "model.neck=ocr"]), classes, 255).eval()
    assert model.neck.regions[1].out_channels == classes and model.auxiliary is None
    images, targets = torch.rand(2, 3, 64, 64) * 255, torch.randint(0, classes, (2, 64, 64))
    losses = model(images, targets).losses
    regions = model.neck(model.backbone((images - model.pixel_mean) / model.pixel_std), (64, 64)).auxiliary_logits
    expected = 0.4 * F.cross_entropy(F.interpolate(regions, size=(64, 64), mode="bilinear", align_corners=False), targets)
    assert set(losses) == {"ce", "regions"} and torch.allclose(losses["regions"], expected)


def test_auxiliary_head_adds_its_weighted_loss_in_training_and_never_runs_at_inference():
    cfg = apply_overrides(RunConfig(), [*_TINY, "model.neck=fcn"])
    torch.manual_seed(0)
    model = build_segmentor(cfg, 5, 255).eval()  # eval: dropout off, so the loss can be recomputed
    images = torch.rand(2, 3, 64, 64) * 255
    targets = torch.randint(0, 5, (2, 64, 64))
    targets[:, :8] = 255
    losses = model(images, targets).losses
    stages = model.backbone((images - model.pixel_mean) / model.pixel_std)
    aux = model.auxiliary
    logits = aux.classifier(aux.conv(stages[2]))
    expected = 0.4 * F.cross_entropy(F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False),
                                     targets, ignore_index=255)
    assert set(losses) == {"ce", "aux"} and torch.allclose(losses["aux"], expected)
    calls = []
    aux.register_forward_hook(lambda *a: calls.append(1))
    model.predict(images)
    model(images)
    assert calls == []


@pytest.mark.parametrize("neck, term", [("fcn", "aux"), ("ocr", "regions")])
def test_the_auxiliary_and_region_losses_average_as_the_cell_s_head(neck, term):
    """MMSeg's auxiliary FCN head and OCRNet's regions use the decode head's CrossEntropyLoss:
    a head with ``loss_average: all`` divides those CEs by every pixel too."""
    images = torch.rand(2, 3, 64, 64) * 255
    targets = torch.randint(0, 5, (2, 64, 64))
    targets[:, :16] = 255  # a quarter ignored
    losses = {}
    for average in ("labelled", "all"):
        torch.manual_seed(0)
        cfg = apply_overrides(RunConfig(), [*_TINY, f"model.neck={neck}", f"model.classifier_kwargs.loss_average={average}"])
        losses[average] = build_segmentor(cfg, 5, 255).eval()(images, targets).losses
    for name in ("ce", term):
        torch.testing.assert_close(losses["all"][name], 0.75 * losses["labelled"][name])


def test_auxiliary_head_is_counted_as_training_only_and_follows_the_neck_s_default():
    channels = build_backbone("test_convnext").channels
    counts = {}
    for neck, extra in (("fcn", []), ("fcn", ["model.neck_kwargs.auxiliary=false"]), ("mlp", []),
                        ("mlp", ["model.neck_kwargs.auxiliary=true"])):
        model = build_segmentor(apply_overrides(RunConfig(), [*_TINY, f"model.neck={neck}", *extra]), 5, 255)
        counts[neck, bool(extra)] = count_parameters(model)
    auxiliary = _bn_conv(channels[2], 256, 3) + 256 * 5 + 5
    for key, expected in {("fcn", False): auxiliary, ("fcn", True): 0, ("mlp", False): 0, ("mlp", True): auxiliary}.items():
        c = counts[key]
        assert c["params/auxiliary"] == expected
        assert c["params/inference"] == c["params/total"] - expected - c["params/head_training_only"]
        assert c["params/training_only"] == expected + c["params/head_training_only"]
    with pytest.raises(InputError, match=r"model.neck_kwargs \{'pool_scale': 3\}: not options of neck 'fcn'"):
        build_segmentor(apply_overrides(RunConfig(), [*_TINY, "model.neck=fcn", "model.neck_kwargs.pool_scale=3"]), 5, 255)


def test_keys_added_later_change_the_hash_only_when_set():
    """Cells logged before ``model.neck_kwargs``, ``model.sync_bn``, ``train.accumulate`` and
    ``train.precision`` existed keep their ``config_hash``."""
    import hashlib
    import json

    from harness.config import flatten, to_dict
    from harness.config.identity import _HASHED_WHEN_SET, _NOT_HASHED

    base = RunConfig()
    measurement = {k for k in flatten(to_dict(base)) if k.startswith("measure.")} | {"data.eval_batch_size"}
    before = {k: v for k, v in flatten(to_dict(base)).items()
              if k not in _NOT_HASHED | measurement | set(_HASHED_WHEN_SET)}
    assert config_hash(base) == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    for setting in ("model.neck_kwargs.auxiliary=true", "model.sync_bn=false", "train.accumulate=2",
                    "train.precision=bf16"):
        assert config_hash(apply_overrides(base, [setting])) != config_hash(base), setting
