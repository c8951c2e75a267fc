"""The papers' encoders: each builds with pretrained=False, runs at 256x256 (and at a size
that is not a multiple of 32) on CPU and returns NCHW maps matching its channels/strides;
MiT-B0..B5 match the SegFormer paper's encoder sizes."""

import pytest
import torch

from backbones import build_backbone, build_neck, list_backbones

_PAPER_BACKBONES = ["resnet101_os8", "hrnetv2_w48", "swin_t", "swin_b", "swin_l", "convnext_tiny", "mobilenetv2_100",
                    "mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5"]
# SegFormer (Xie et al. 2021) Table 1: encoder parameters (M).
_MIT_PARAMS = {"mit_b0": 3.4, "mit_b1": 13.1, "mit_b2": 24.2, "mit_b3": 44.0, "mit_b4": 60.8, "mit_b5": 81.4}
_EXPECTED_STRIDES = {"resnet101_os8": [4, 8, 8, 8]}


@pytest.mark.parametrize("name", _PAPER_BACKBONES)
def test_builds_and_runs_at_256_with_its_channels_and_strides(name):
    assert name in list_backbones()
    torch.manual_seed(0)
    backbone = build_backbone(name).eval()
    assert backbone.strides == _EXPECTED_STRIDES.get(name, [4, 8, 16, 32])
    with torch.inference_mode():
        for size in (256, 250):
            feats = backbone(torch.rand(1, 3, size, size))
            assert [f.shape[1] for f in feats] == backbone.channels
            assert all(f.shape[-1] in (size // s, -(-size // s)) for f, s in zip(feats, backbone.strides))  # NCHW
            assert all(torch.isfinite(f).all() for f in feats)


@pytest.mark.parametrize("name, millions", sorted(_MIT_PARAMS.items()))
def test_mit_encoder_sizes_match_segformer_table_1(name, millions):
    params = sum(p.numel() for p in build_backbone(name).parameters()) / 1e6
    assert params == pytest.approx(millions, rel=0.03)


def test_hrnet_concat_neck_concatenates_every_branch_at_stride_4():
    backbone = build_backbone("hrnetv2_w48").eval()
    neck = build_neck("hrnet_concat", backbone.channels, backbone.strides, 64)
    assert neck.fuse[0].in_channels == 48 + 96 + 192 + 384
    with torch.inference_mode():
        features = neck(backbone(torch.rand(1, 3, 250, 250)), (250, 250))
    assert features.pixel.shape == (1, 64, 63, 63)
    assert [p.shape[-1] for p in features.pyramid] == [63, 32, 16, 8] and all(p.shape[1] == 64 for p in features.pyramid)


def test_mit_pretrained_offline_is_a_one_line_error_pointing_to_a_local_checkpoint():
    from harness.errors import InputError

    with pytest.raises(InputError, match=r"cannot load nvidia/mit-b0 here .*checkpoint=PATH to a local copy \(pretrained=True needs the model hub\)") as info:
        build_backbone("mit_b0", pretrained=True)  # HF_HUB_OFFLINE=1 in tests
    assert "\n" not in str(info.value)


def test_list_backbones_details_shows_channels_and_strides(capsys):
    from harness.cli import main

    assert main(["list", "backbones", "--pattern", "mit_b[01]", "--details"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("mit_b0") and "channels [32, 64, 160, 256]  strides [4, 8, 16, 32]  3.3 M params" in lines[0]
    assert lines[1].startswith("mit_b1") and "channels [64, 128, 320, 512]" in lines[1]
    assert main(["list", "backbones", "--details"]) == 2
