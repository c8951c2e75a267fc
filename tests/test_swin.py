"""segheads' Swin (``backbones.swin``): the layouts it loads, the tensors it needs, the maps it
gives. Its outputs against MMSegmentation's own ``SwinTransformer`` are in
``tests/peers/test_mmseg_swin.py``."""

import pytest
import timm
import torch

from backbones import build_backbone
from backbones.swin import to_mmseg_layout
from harness.errors import InputError


def _timm_state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).state_dict()


def _official(timm_state: dict) -> dict:
    """The Swin authors' layout: each patch merging at the end of its stage (timm puts it at the
    start of the next), under ``model``."""
    moved = {}
    for key, value in timm_state.items():
        parts = key.split(".")
        if parts[0] == "layers" and parts[2] == "downsample":
            key = ".".join(["layers", str(int(parts[1]) - 1), *parts[2:]])
        moved[key] = value
    return {"model": moved}


def _stage_maps(encoder, images):
    """Each stage's blocks' output (before its output norm), NHWC, as timm's features give them."""
    maps = []
    hooks = [stage.register_forward_hook(lambda module, args, out: maps.append(out)) for stage in encoder.stages]
    encoder(images)
    for hook in hooks:
        hook.remove()
    return [m.view(images.shape[0], images.shape[2] // s, images.shape[3] // s, -1) for m, s in zip(maps, encoder.strides)]


def test_timm_weights_compute_timms_stages_where_the_two_swins_agree(tmp_path):
    """At 224 px with window 7 nothing is padded and stages 1-3 are larger than the window, so
    MMSegmentation's Swin and timm's compute the same there; timm's weights, loaded, must give
    timm's maps (patch merging reordered into nn.Unfold's order, names mapped)."""
    state = _timm_state()
    torch.save(state, tmp_path / "timm.pth")
    encoder = build_backbone("swin_t", checkpoint=str(tmp_path / "timm.pth")).eval()
    reference = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    reference.load_state_dict(state)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours, theirs, x = _stage_maps(encoder, images), [], reference.patch_embed(images)
        for layer in reference.layers:  # timm's stage: its patch merging, then its blocks (NHWC)
            x = layer(x)
            theirs.append(x)
    for stage in range(3):
        torch.testing.assert_close(ours[stage], theirs[stage], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ours[3], theirs[3], atol=1e-2)  # the last stage: MMSeg keeps the shift, timm drops it


def test_official_timm_and_own_layouts_load_the_same_tensors(tmp_path):
    state = _timm_state(1)
    torch.save(state, tmp_path / "timm.pth")
    torch.save(_official(state), tmp_path / "official.pth")
    from_timm = build_backbone("swin_t", checkpoint=str(tmp_path / "timm.pth"))
    from_official = build_backbone("swin_t", checkpoint=str(tmp_path / "official.pth"))
    own = {k: v for k, v in from_official.state_dict().items()}
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in own.items()}}, tmp_path / "segmentor.pth")
    from_segmentor = build_backbone("swin_t", checkpoint=str(tmp_path / "segmentor.pth"))
    for encoder in (from_timm, from_segmentor):
        for name, value in encoder.state_dict().items():
            assert torch.equal(value, own[name]), name
    assert from_official.weights.loaded == from_timm.weights.loaded == len(own) - 8  # all but the 4 output norms
    assert from_segmentor.weights.loaded == len(own) and not from_segmentor.weights.unexpected
    assert set(from_official.weights.unexpected) == {"norm.weight", "norm.bias", "head.fc.weight", "head.fc.bias"}
    for i in range(4):  # an ImageNet file has no output norms: they start as MMSeg leaves them
        norm = getattr(from_official, f"norm{i}")
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and not norm.bias.any()


def test_patch_merging_is_reordered_into_unfold_order():
    """The official [x0, x1, x2, x3] (neighbours (0,0), (1,0), (0,1), (1,1)) becomes channel-major
    (c, row, column): input feature c of neighbour (r, q) moves to 4c + 2r + q."""
    channels = 3
    official = torch.arange(4 * channels, dtype=torch.float32)[None]  # feature index as value
    reordered = to_mmseg_layout({"layers.0.downsample.reduction.weight": official})["stages.0.downsample.reduction.weight"]
    neighbour = {(0, 0): 0, (1, 0): 1, (0, 1): 2, (1, 1): 3}
    for c in range(channels):
        for (row, col), k in neighbour.items():
            assert reordered[0, 4 * c + 2 * row + col] == k * channels + c


def test_segmentor_checkpoint_needs_its_output_norms_and_extra_or_missing_tensors_fail(tmp_path):
    own = build_backbone("swin_t").state_dict()
    torch.save({k: v for k, v in own.items() if not k.startswith("norm2.")}, tmp_path / "no_norm2.pth")
    with pytest.raises(InputError, match=r"fills \d+ of \d+ encoder tensors \(2 missing; first missing: "
                                         r"norm2.weight, norm2.bias\)"):
        build_backbone("swin_t", checkpoint=str(tmp_path / "no_norm2.pth"))
    torch.save({**own, "stages.3.blocks.2.norm1.weight": torch.ones(768), "decoder.weight": torch.ones(3)},
               tmp_path / "extra.pth")
    with pytest.raises(InputError, match=r"has 2 tensors this encoder has no place for \(first: "
                                         r"stages.3.blocks.2.norm1.weight, decoder.weight\)") as info:
        build_backbone("swin_t", checkpoint=str(tmp_path / "extra.pth"))
    assert "\n" not in str(info.value)
    lenient = build_backbone("swin_t", checkpoint=str(tmp_path / "extra.pth"), checkpoint_strict=False)
    assert len(lenient.weights.unexpected) == 2
    with pytest.raises(InputError, match=r"checkpoint .* has \d+ tensors of the wrong shape \(first: "
                                         r"patch_embed.projection.weight \(128, 3, 4, 4\) for \(96, 3, 4, 4\)"):
        torch.save(build_backbone("swin_b").state_dict(), tmp_path / "swin_b.pth")
        build_backbone("swin_t", checkpoint=str(tmp_path / "swin_b.pth"))


def test_another_window_sizes_tables_are_resized_to_this_models(tmp_path):
    state = build_backbone("swin_b", window_size=7).state_dict()
    torch.save(state, tmp_path / "swin_b_w7.pth")
    encoder = build_backbone("swin_b", checkpoint=str(tmp_path / "swin_b_w7.pth"))  # window 12
    table = encoder.stages[0].blocks[0].attn.w_msa.relative_position_bias_table
    assert table.shape == (23 * 23, 4) and not encoder.weights.missing
    assert encoder.state_dict()["patch_embed.projection.weight"].equal(state["patch_embed.projection.weight"])


@pytest.mark.parametrize("name, blocks", [("swin_t", 12), ("swin_s", 24), ("swin_b", 24), ("swin_l", 24)])
def test_drop_path_rises_to_mmsegs_0_3_over_the_blocks(name, blocks):
    encoder = build_backbone(name, window_size=7)
    rates = [block.attn.drop_path for stage in encoder.stages for block in stage.blocks]
    assert len(rates) == blocks and rates[0] == 0 and rates[-1] == pytest.approx(0.3)
    assert rates == [block.ffn.drop_path for stage in encoder.stages for block in stage.blocks]
    with pytest.raises(InputError, match="drop_path_rate=1.5; expected a value in"):
        build_backbone(name, drop_path_rate=1.5)


@pytest.mark.parametrize("size", [(64, 64), (250, 301), (33, 97)])
def test_any_input_size_gives_ceil_divided_maps(size):
    encoder = build_backbone("swin_t").eval()
    with torch.no_grad():
        maps = encoder(torch.randn(1, 3, *size))
    assert [tuple(m.shape[1:]) for m in maps] == [
        (c, -(-size[0] // s), -(-size[1] // s)) for c, s in zip(encoder.channels, encoder.strides)]
