"""The papers' CNN and MiT encoders against MMSegmentation's, on the same weights (MMSeg's files,
read by segheads' loaders): ResNet-101 V1c with output stride 8 (FCN, DeepLabV3+), HRNetV2-W48
(FCN, OCRNet), MiT (SegFormer). Each map within 1e-4 at an ADE20K-sized test image (512 x 683,
no multiple of 32: HRNet's odd-sized branches must fuse as MMSeg's do). Swin has its own file."""

import pytest
import torch
from peers.mmseg_peer import randomise

from backbones import build_backbone

_CONFIGS = {  # segheads encoder -> the MMSeg config whose backbone it is
    "resnet101_os8": "fcn/fcn_r101-d8_4xb4-160k_ade20k-512x512.py",
    "hrnetv2_w48": "hrnet/fcn_hr48_4xb4-160k_ade20k-512x512.py",
    "mit_b0": "segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py",
}


def mmseg_backbone(configs, name):
    """MMSeg's encoder of ``name``'s config, BatchNorm for SyncBN, nothing downloaded."""
    from mmengine.config import Config  # MMSegmentation's, imported where it is (the mmseg fixture skips otherwise)
    from mmseg.registry import MODELS

    backbone = Config.fromfile(configs / _CONFIGS[name]).model.backbone
    backbone.init_cfg = None
    if "norm_cfg" in backbone:
        backbone.norm_cfg = dict(type="BN", requires_grad=True)
    return MODELS.build(backbone)


@pytest.mark.parametrize("name", sorted(_CONFIGS))
def test_encoder_maps_equal_mmsegs(mmseg, mmseg_configs, tmp_path, name):
    torch.set_num_threads(2)
    reference = randomise(mmseg_backbone(mmseg_configs, name), seed=5)
    reference.eval()
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in reference.state_dict().items()}}, tmp_path / "mmseg.pth")
    ours = build_backbone(name, checkpoint=str(tmp_path / "mmseg.pth")).eval()
    assert not ours.weights.missing
    images = torch.randn(1, 3, 512, 683, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected, found = reference(images), ours(images)
    expected = expected[-4:]  # the MiT gives its four stages, ResNet and HRNet theirs
    assert [tuple(f.shape) for f in found] == [tuple(e.shape) for e in expected]
    for stage, (e, f) in enumerate(zip(expected, found)):
        torch.testing.assert_close(f, e, atol=1e-4, rtol=1e-4, msg=lambda m, s=stage: f"{name} stage {s}: {m}")
