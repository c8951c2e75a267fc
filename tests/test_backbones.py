import pytest
import torch

from backbones import Features, build_backbone, build_neck, list_backbones
from harness.errors import InputError


def test_swin_nhwc_features_become_nchw_with_feature_info_channels_and_strides():
    backbone = build_backbone("swin_tiny_patch4_window7_224", img_size=64)
    assert backbone.strides == [4, 8, 16, 32]
    assert backbone.channels == [96, 192, 384, 768]
    feats = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 96, 16, 16), (1, 192, 8, 8), (1, 384, 4, 4), (1, 768, 2, 2)]


def test_cnn_backbone_drops_stride_2_features():
    backbone = build_backbone("test_resnet")
    assert backbone.strides == [4, 8, 16, 32]
    feats = backbone(torch.randn(2, 3, 64, 64))
    assert [f.shape[1] for f in feats] == backbone.channels
    assert [64 // f.shape[-1] for f in feats] == backbone.strides


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(InputError, match="unknown backbone 'resnet181'.*resnet18"):
        build_backbone("resnet181")
    assert "resnet18" in list_backbones("resnet1*")


def test_checkpoint_loads_weights_only(tmp_path):
    source = build_backbone("test_resnet")
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": source.body.state_dict()}, path)
    loaded = build_backbone("test_resnet", checkpoint=str(path))
    for key, value in source.body.state_dict().items():
        assert torch.equal(value, loaded.body.state_dict()[key])
    with pytest.raises(InputError, match="not found"):
        build_backbone("test_resnet", checkpoint=str(tmp_path / "missing.pt"))


@pytest.mark.parametrize("neck", ["mlp", "fpn"])
def test_necks_make_stride4_pixel_map_and_d_wide_pyramid(neck):
    backbone = build_backbone("test_convnext")
    module = build_neck(neck, backbone.channels, backbone.strides, embed_dim=32)
    features = module(backbone(torch.randn(2, 3, 70, 50)), (70, 50))
    assert isinstance(features, Features)
    assert features.pixel.shape == (2, 32, 18, 13)  # ceil(70/4), ceil(50/4)
    assert [p.shape[1] for p in features.pyramid] == [32] * 4
    assert features.image_size == (70, 50)


def test_unknown_neck_lists_known():
    with pytest.raises(InputError, match="known necks: deeplabv3plus, fcn, fpn, hrnet_concat, hrnet_fcn, mlp, ocr, segformer, stages, upernet"):
        build_neck("aspp", [8], [4])
