"""segheads' Swin against MMSegmentation's ``SwinTransformer``, on the same weights: every
output map within 1e-4 at the papers' crops (512 and 640 px: 128 and 160 tokens a side are no
multiple of 7 or 12, so every block pads, and the last stage is smaller than the window), the
weights in MMSeg's own layout, in the official release's through MMSeg's own converter, and
ImageNet-22K window-7 tables resized into window-12 models as MMSeg's ``init_weights`` does."""

import pytest
import timm
import torch
from peers.mmseg_peer import load_module, randomise

from backbones import build_backbone

# MMSeg's Swin configs (configs/swin/*, _base_/models/upernet_swin.py): the papers' encoders.
_CONFIGS = {
    "swin_t": dict(embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
    "swin_s": dict(embed_dims=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24]),
    "swin_b": dict(embed_dims=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32]),
    "swin_l": dict(embed_dims=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48]),
}


def _mmseg_swin(name: str, window: int, **extra):
    from mmseg.registry import MODELS

    model = MODELS.build(dict(type="SwinTransformer", window_size=window, drop_path_rate=0.3, **_CONFIGS[name], **extra))
    model.eval()  # MMSeg's SwinTransformer.train returns None: no chaining
    return model


def _compare(reference, ours, size):
    images = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected, found = reference(images), ours(images)
    assert len(found) == 4
    for stage, (e, f) in enumerate(zip(expected, found)):
        assert f.shape == e.shape, stage
        torch.testing.assert_close(f, e, atol=1e-4, rtol=1e-4, msg=lambda m, s=stage: f"stage {s}: {m}")


@pytest.mark.parametrize("name, window, size", [("swin_t", 7, (512, 512)), ("swin_b", 12, (640, 640)),
                                                ("swin_t", 12, (512, 683))])
def test_outputs_equal_mmsegs_at_the_papers_crops(mmseg, tmp_path, name, window, size):
    torch.set_num_threads(2)
    reference = randomise(_mmseg_swin(name, window), seed=1)
    torch.save({"state_dict": reference.state_dict()}, tmp_path / "mmseg.pth")  # norm0..3 and all
    ours = build_backbone(name, window_size=window, checkpoint=str(tmp_path / "mmseg.pth")).eval()
    assert ours.weights.loaded == len(ours.state_dict()) and not ours.weights.unexpected
    _compare(reference, ours, size)


@pytest.mark.parametrize("name, window", [("swin_s", 7), ("swin_l", 12), ("swin_b", 7), ("swin_l", 7)])
def test_every_variant_has_mmsegs_tensors(mmseg, name, window):
    """Swin-S and -L (and window 7 on B and L) have exactly MMSeg's tensor names and shapes; their
    computation is the one tested above at T and B (segheads' built on the meta device)."""
    reference = _mmseg_swin(name, window).state_dict()
    with torch.device("meta"):
        ours = build_backbone(name, window_size=window).state_dict()
    derived = {k for k in reference if k.endswith("relative_position_index")}
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in reference.items() if k not in derived}


def test_the_official_release_loads_as_mmsegs_converter_converts_it(mmseg, mmseg_tools, tmp_path):
    """The authors' layout (``layers.N``, ``attn.qkv``, ``mlp.fc1``, patch merging [x0..x3] at the
    end of stage N, under ``model``), converted by MMSeg's own tools/model_converters/swin2mmseg.py
    into MMSeg's model, and read by segheads directly: the same maps."""
    torch.manual_seed(3)
    timm_state = randomise(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False), seed=3).state_dict()
    official = {}
    for key, value in timm_state.items():  # timm opens stage N+1 with the merging the authors close stage N with
        parts = key.split(".")
        if parts[0] == "layers" and parts[2] == "downsample":
            key = ".".join(["layers", str(int(parts[1]) - 1), *parts[2:]])
        official[key] = value
    torch.save({"model": official}, tmp_path / "swin_tiny_patch4_window7_224.pth")
    converter = load_module(mmseg_tools / "model_converters" / "swin2mmseg.py", "swin2mmseg")
    reference = _mmseg_swin("swin_t", 7)
    converted = converter.convert_swin(official)
    assert set(reference.load_state_dict(converted, strict=False).unexpected_keys) == {"norm.weight", "norm.bias"}
    ours = build_backbone("swin_t", checkpoint=str(tmp_path / "swin_tiny_patch4_window7_224.pth")).eval()
    _compare(reference, ours, (512, 512))


def test_window_7_tables_in_a_window_12_model_are_resized_as_mmseg_does(mmseg, tmp_path):
    torch.manual_seed(4)
    window7 = randomise(_mmseg_swin("swin_t", 7), seed=4).state_dict()
    tables = {k: v for k, v in window7.items() if not k.endswith("relative_position_index")}  # MMSeg cannot resize those
    torch.save({"state_dict": tables}, tmp_path / "w7.pth")
    reference = _mmseg_swin("swin_t", 12, init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "w7.pth")))
    reference.init_weights()  # MMSeg's loader: bicubic resize of each relative_position_bias_table
    reference.eval()
    ours = build_backbone("swin_t", window_size=12, checkpoint=str(tmp_path / "w7.pth")).eval()
    _compare(reference, ours, (256, 320))
