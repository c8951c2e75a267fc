"""The recipe as MMSegmentation runs it: ConvModule initialisation of the decoder (``model.init:
mmseg``) and the configs' parameter groups (``train.param_groups``, MMEngine's custom_keys)."""

import math

import pytest
import torch

from harness.config import RunConfig, TrainConfig, apply_overrides
from harness.errors import InputError
from harness.modeling import build_segmentor
from harness.solver import build_optimizer, build_scheduler

_TINY = ["model.backbone=test_convnext", "model.embed_dim=64", "model.neck=upernet", "data.num_workers=0"]


def _segmentor(*overrides: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_segmentor(apply_overrides(RunConfig(), _TINY + list(overrides)), num_classes=150, ignore_label=255)


def test_mmseg_init_is_kaiming_fan_out_in_the_decoder_and_normal_0_01_for_conv_seg():
    model = _segmentor("model.init=mmseg")
    convs = [m for m in [*model.neck.modules(), *model.auxiliary.modules()] if isinstance(m, torch.nn.Conv2d)
             and m is not model.auxiliary.classifier]
    assert convs
    for conv in convs:  # N(0, 2 / fan_out): fan_out = out_channels x kernel area
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.15)
        assert conv.bias is None or not conv.bias.any()
    for norm in (m for m in model.neck.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and not norm.bias.any()
    for conv_seg in (model.classifier.projection, model.auxiliary.classifier):  # 150 x 64 and 150 x 256 weights
        assert conv_seg.weight.std().item() == pytest.approx(0.01, rel=0.1) and not conv_seg.bias.any()


def test_mmseg_init_leaves_the_backbone_and_torch_init_leaves_pytorchs_defaults():
    torch_init, mmseg = _segmentor(), _segmentor("model.init=mmseg")
    for name, value in torch_init.backbone.state_dict().items():
        assert torch.equal(value, mmseg.backbone.state_dict()[name]), name
    default = torch_init.classifier.projection  # kaiming_uniform(a=sqrt(5)): std 1 / sqrt(3 fan_in)
    assert default.weight.std().item() == pytest.approx(1 / math.sqrt(3 * 64), rel=0.15) and default.bias.any()


def test_ocr_regions_and_ssa_coarse_mask_are_the_conv_segs_they_stand_for():
    ocr = _segmentor("model.init=mmseg", "model.neck=ocr", "model.classifier=ssa")
    for conv_seg in (ocr.neck.regions[1], ocr.classifier.coarse):
        assert conv_seg.weight.std().item() == pytest.approx(0.01, rel=0.1)


def _groups(model, **train):
    optimizer = build_optimizer(model, TrainConfig(lr=0.01, weight_decay=0.05, **train))
    by_param = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            by_param[param] = (group["lr"], group["weight_decay"])
    return optimizer, {name: by_param[p] for name, p in model.named_parameters()}


def test_without_param_groups_no_decay_on_one_dimensional_parameters_only():
    model = _segmentor()
    optimizer, settings = _groups(model)
    assert len(optimizer.param_groups) == 2 and optimizer.param_groups[0]["weight_decay"] == 0.05
    for name, param in model.named_parameters():
        assert settings[name] == (0.01, 0.0 if param.ndim <= 1 else 0.05), name


def test_the_longest_key_a_name_contains_sets_its_lr_and_decay_multipliers():
    """Keys do not combine: the longest one contained in a name decides; a multiplier it leaves out
    is the default (lr x1; no decay on 1-d parameters)."""
    model = _segmentor()
    groups = {"neck": {"lr_mult": 10}, "neck.laterals": {"lr_mult": 2}, "classifier": {"lr_mult": 10, "decay_mult": 0},
              "": {"decay_mult": 1}}  # "" is in every name: decay on biases and norms too (MMSeg's SGD recipes)
    optimizer, settings = _groups(model, param_groups=groups)
    one_dimensional = {name for name, param in model.named_parameters() if param.ndim <= 1}
    for name in settings:
        default_decay = 0.0 if name in one_dimensional else 0.05
        if "neck.laterals" in name:
            expected = (0.02, default_decay)
        elif "neck" in name:
            expected = (0.1, default_decay)
        elif "classifier" in name:
            expected = (0.1, 0.0)
        else:
            expected = (0.01, 0.05)
        assert settings[name] == pytest.approx(expected), name
    assert optimizer.param_groups[0]["lr"] == 0.01  # the base group first: the lr MetricsHook reports
    scheduler = build_scheduler(optimizer, TrainConfig(lr=0.01, iters=10))
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    ratios = {round(group["lr"] / optimizer.param_groups[0]["lr"], 6) for group in optimizer.param_groups}
    assert ratios == {1.0, 2.0, 10.0}  # the schedule scales every group alike


def test_swins_relative_position_tables_take_no_decay_with_the_papers_keys():
    torch.manual_seed(0)
    model = build_segmentor(apply_overrides(RunConfig(), ["model.backbone=swin_t", "model.neck=upernet", "model.embed_dim=32"]),
                            num_classes=5, ignore_label=255)
    _, settings = _groups(model, param_groups={"relative_position_bias_table": {"decay_mult": 0}, "norm": {"decay_mult": 0}})
    tables = [name for name in settings if name.endswith("relative_position_bias_table")]
    assert len(tables) == 12 and all(settings[name][1] == 0.0 for name in tables)
    assert settings["backbone.stages.0.blocks.0.attn.w_msa.qkv.weight"][1] == 0.05


def test_param_groups_are_checked_with_the_key_named():
    with pytest.raises(InputError, match=r"train.param_groups.neck: expected a mapping of lr_mult and/or decay_mult"):
        apply_overrides(RunConfig(), ["train.param_groups={neck: {lr: 10}}"])
    with pytest.raises(InputError, match=r"train.param_groups.neck.lr_mult=-1; expected a number >= 0"):
        apply_overrides(RunConfig(), ["train.param_groups={neck: {lr_mult: -1}}"])
    with pytest.raises(InputError, match=r"train.param_groups.absolute_pos_embed: matches no parameter name of this model"):
        _groups(_segmentor(), param_groups={"absolute_pos_embed": {"decay_mult": 0}})
