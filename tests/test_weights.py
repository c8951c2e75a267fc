"""Encoder weights load whole or fail loudly (``backbones.weights``): real timm and transformers
state dicts, saved as ImageNet checkpoints are, loaded through ``checkpoint:``."""

import pytest
import timm
import torch

from backbones import build_backbone
from harness.config import RunConfig, apply_overrides
from harness.engine import LocalContext, train_cell
from harness.errors import InputError

# segheads name -> (timm model whose state dict is the checkpoint, kwargs of both)
_TIMM = {"resnet101_os8": ("resnet101c", {}), "hrnetv2_w48": ("hrnet_w48", {})}


def _flat(name: str) -> str:
    return name.replace(".", "_")


def _assert_encoder_holds(encoder: torch.nn.Module, state: dict) -> int:
    """Every encoder tensor equals the file's tensor of the same (flattened) name; returns how many."""
    own = {_flat(k): v for k, v in encoder.state_dict().items()}
    shared = [k for k in state if _flat(k) in own]
    assert len(shared) == len(own)
    for name in shared:
        assert torch.equal(own[_flat(name)], state[name]), name
    return len(shared)


@pytest.mark.parametrize("name", sorted(_TIMM))
def test_a_timm_imagenet_state_dict_loads_every_encoder_tensor_and_half_of_one_fails(name, tmp_path):
    timm_name, kwargs = _TIMM[name]
    torch.manual_seed(1)
    state = timm.create_model(timm_name, pretrained=False, **kwargs).state_dict()
    torch.save(state, tmp_path / "full.pth")
    encoder = build_backbone(name, checkpoint=str(tmp_path / "full.pth"))
    loaded = _assert_encoder_holds(encoder.body, state)
    report = encoder.weights
    assert report.loaded == loaded and not report.missing
    assert set(report.unexpected) <= {k for k in state if not any(_flat(k) == _flat(o) for o in encoder.body.state_dict())}

    half = dict(list(state.items())[: len(state) // 2])
    torch.save({"state_dict": half}, tmp_path / "half.pth")  # under "state_dict", as MMSeg and timm trainers save
    with pytest.raises(InputError, match=rf"checkpoint {tmp_path / 'half.pth'} fills \d+ of {loaded} encoder tensors "
                                         rf"\(\d+ missing; first missing: .+\); expected all") as info:
        build_backbone(name, checkpoint=str(tmp_path / "half.pth"))
    assert "\n" not in str(info.value)
    partial = build_backbone(name, checkpoint=str(tmp_path / "half.pth"), checkpoint_strict=False)
    assert 0 < partial.weights.loaded < loaded and len(partial.weights.missing) == loaded - partial.weights.loaded


def _segformer(variant_channels=(32, 64, 160, 256)):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(hidden_sizes=list(variant_channels), depths=[2, 2, 2, 2], num_attention_heads=[1, 2, 5, 8],
                             sr_ratios=[8, 4, 2, 1], decoder_hidden_size=256, num_labels=7)
    torch.manual_seed(3)
    return SegformerForSemanticSegmentation(config)


def test_mit_loads_a_transformers_folder_or_state_dict_whole_and_half_fails(tmp_path):
    full = _segformer()
    full.save_pretrained(tmp_path / "mit-b0")  # config.json + model.safetensors, as nvidia/mit-b0 on the hub
    encoder_state = full.segformer.state_dict()
    from_folder = build_backbone("mit_b0", checkpoint=str(tmp_path / "mit-b0"))
    for name, value in from_folder.body.state_dict().items():
        assert torch.equal(value, encoder_state[name]), name
    assert from_folder.weights.loaded == len(encoder_state) and not from_folder.weights.missing
    assert from_folder.weights.unexpected and all(k.startswith("decode_head.") for k in from_folder.weights.unexpected)

    torch.save(encoder_state, tmp_path / "mit_b0.pt")  # a SegformerModel state dict, this version's names
    assert build_backbone("mit_b0", checkpoint=str(tmp_path / "mit_b0.pt")).weights.loaded == len(encoder_state)
    from safetensors.torch import load_file

    hub_names = load_file(tmp_path / "mit-b0" / "model.safetensors")  # the hub's names: segformer.encoder.block...
    assert any(k.startswith("segformer.encoder.") for k in hub_names)
    torch.save(hub_names, tmp_path / "hub_names.pt")
    from_hub_names = build_backbone("mit_b0", checkpoint=str(tmp_path / "hub_names.pt"))
    for name, value in from_hub_names.body.state_dict().items():
        assert torch.equal(value, encoder_state[name]), name
    torch.save(dict(list(encoder_state.items())[::2]), tmp_path / "half.pt")
    with pytest.raises(InputError, match=r"backbone 'mit_b0': checkpoint .*half.pt fills \d+ of \d+ encoder tensors"):
        build_backbone("mit_b0", checkpoint=str(tmp_path / "half.pt"))


def test_a_checkpoint_of_another_model_is_named_with_the_wrong_shapes(tmp_path):
    full = _segformer(variant_channels=(64, 128, 320, 512))  # MiT-B1 widths
    torch.save(full.segformer.state_dict(), tmp_path / "mit_b1.pt")
    with pytest.raises(InputError, match=r"backbone 'mit_b0': checkpoint .*mit_b1.pt has \d+ tensors of the wrong shape \(first: stages\.\S+ \(\d+"):
        build_backbone("mit_b0", checkpoint=str(tmp_path / "mit_b1.pt"))
    torch.save({"not": "tensors"}, tmp_path / "junk.pt")
    with pytest.raises(InputError, match="junk.pt: expected a mapping of names to tensors"):
        build_backbone("resnet18", checkpoint=str(tmp_path / "junk.pt"))
    with pytest.raises(InputError, match="missing.pt not found"):
        build_backbone("resnet18", checkpoint=str(tmp_path / "missing.pt"))


def test_a_cells_params_say_what_its_weights_load_did(tmp_path, monkeypatch):
    """``weights:<file>`` is read under $SEGHEADS_WEIGHTS; the cell's engine params count the tensors."""
    torch.manual_seed(4)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    (tmp_path / "store").mkdir()
    torch.save(state, tmp_path / "store" / "resnet18_in1k.pth")
    monkeypatch.setenv("SEGHEADS_WEIGHTS", str(tmp_path / "store"))
    cfg = apply_overrides(RunConfig(), ["model.backbone=resnet18", "model.backbone_kwargs={checkpoint: 'weights:resnet18_in1k.pth'}",
                                        "model.embed_dim=16", "data.num_workers=0", "data.image_size=32",
                                        "train.iters=1", "measure.enabled=false"])
    result, model = train_cell(cfg, LocalContext(torch.device("cpu")))
    engine = result.environment["engine"]
    assert engine["backbone_weights"] == str(tmp_path / "store" / "resnet18_in1k.pth")
    assert engine["backbone_weights_loaded"] == str(len(model.backbone.body.state_dict()))
    assert engine["backbone_weights_missing"] == "0" and engine["backbone_weights_unexpected"] == "2"  # fc.weight, fc.bias
    monkeypatch.setenv("SEGHEADS_WEIGHTS", str(tmp_path / "elsewhere"))
    with pytest.raises(InputError, match=r"elsewhere/resnet18_in1k.pth not found"):
        train_cell(cfg, LocalContext(torch.device("cpu")))


def _as_mmseg_mit(hub: dict) -> dict:
    """The hub's Segformer encoder tensors under MMSegmentation's MixVisionTransformer names
    (``mmseg/models/backbones/mit.py``: ``layers.<stage>.0`` PatchEmbed, ``.1.<block>`` layers with
    an ``nn.MultiheadAttention`` and a 1x1-conv MixFFN, ``.2`` the stage norm), as a segmentor
    checkpoint holds them (``backbone.`` prefix)."""
    import re

    out, packed = {}, {}
    rules = [(r"patch_embeddings\.(\d+)\.proj\.(\w+)", "{0}.0.projection.{1}"),
             (r"patch_embeddings\.(\d+)\.layer_norm\.(\w+)", "{0}.0.norm.{1}"),
             (r"layer_norm\.(\d+)\.(\w+)", "{0}.2.{1}"),
             (r"block\.(\d+)\.(\d+)\.layer_norm_1\.(\w+)", "{0}.1.{1}.norm1.{2}"),
             (r"block\.(\d+)\.(\d+)\.layer_norm_2\.(\w+)", "{0}.1.{1}.norm2.{2}"),
             (r"block\.(\d+)\.(\d+)\.attention\.output\.dense\.(\w+)", "{0}.1.{1}.attn.attn.out_proj.{2}"),
             (r"block\.(\d+)\.(\d+)\.attention\.self\.sr\.(\w+)", "{0}.1.{1}.attn.sr.{2}"),
             (r"block\.(\d+)\.(\d+)\.attention\.self\.layer_norm\.(\w+)", "{0}.1.{1}.attn.norm.{2}"),
             (r"block\.(\d+)\.(\d+)\.mlp\.dense1\.(\w+)", "{0}.1.{1}.ffn.layers.0.{2}"),
             (r"block\.(\d+)\.(\d+)\.mlp\.dwconv\.dwconv\.(\w+)", "{0}.1.{1}.ffn.layers.1.{2}"),
             (r"block\.(\d+)\.(\d+)\.mlp\.dense2\.(\w+)", "{0}.1.{1}.ffn.layers.4.{2}")]
    for key, value in hub.items():
        name = key.removeprefix("segformer.encoder.")
        qkv = re.fullmatch(r"block\.(\d+)\.(\d+)\.attention\.self\.(query|key|value)\.(\w+)", name)
        if qkv:
            stage, block, part, kind = qkv.groups()
            packed.setdefault((stage, block, kind), {})[part] = value
            continue
        for pattern, target in rules:
            found = re.fullmatch(pattern, name)
            if found:
                if (".ffn.layers.0." in target or ".ffn.layers.4." in target) and name.endswith("weight"):
                    value = value[..., None, None]  # MixFFN's 1x1 convs
                out["backbone.layers." + target.format(*found.groups())] = value
                break
    for (stage, block, kind), parts in packed.items():
        out[f"backbone.layers.{stage}.1.{block}.attn.attn.in_proj_{kind}"] = torch.cat([parts[p] for p in ("query", "key", "value")])
    return out


def test_mit_loads_mmsegmentations_mit_state_dict_whole(tmp_path):
    from safetensors.torch import load_file

    full = _segformer()
    full.save_pretrained(tmp_path / "hub")
    hub = {k: v for k, v in load_file(tmp_path / "hub" / "model.safetensors").items() if k.startswith("segformer.")}
    mmseg = _as_mmseg_mit(hub)
    assert len(mmseg) == len(hub) - 2 * 3 * 8 + 2 * 8  # q, k, v weights and biases packed into one in_proj per block
    torch.save({"state_dict": mmseg, "meta": {}}, tmp_path / "mit_b0_mmseg.pth")
    encoder = build_backbone("mit_b0", checkpoint=str(tmp_path / "mit_b0_mmseg.pth"))
    for name, value in encoder.body.state_dict().items():
        assert torch.equal(value, full.segformer.state_dict()[name]), name
    assert not encoder.weights.missing and not encoder.weights.unexpected
    images = torch.rand(1, 3, 64, 64)
    full.eval(), encoder.eval()  # no drop path
    for module in full.modules():  # segheads' MiT runs MMSeg's LayerNorm eps (tests/peers/test_mmseg_encoders.py)
        if isinstance(module, torch.nn.LayerNorm):
            assert module.eps == 1e-5
            module.eps = 1e-6
    with torch.no_grad():
        expected = full.segformer(pixel_values=images, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(encoder(images)[-1], expected)


@pytest.mark.parametrize("name, timm_name", [("resnet101_os8", "resnet101c"), ("hrnetv2_w48", "hrnet_w48")])
def test_mmsegmentations_resnet_v1c_and_hrnet_files_load_whole(name, timm_name, tmp_path):
    """MMSeg's ``ResNetV1c`` keeps its deep stem as ``stem.0..7`` (conv, norm, ReLU x 3) where timm has
    ``conv1.0..6`` and ``bn1``; a segmentor checkpoint holds the encoder under ``backbone.``."""
    torch.manual_seed(5)
    state = timm.create_model(timm_name, pretrained=False).state_dict()
    stem = {"conv1.0.": "stem.0.", "conv1.1.": "stem.1.", "conv1.3.": "stem.3.", "conv1.4.": "stem.4.",
            "conv1.6.": "stem.6.", "bn1.": "stem.7."} if name == "resnet101_os8" else {}
    mmseg = {}
    for key, value in state.items():
        prefix = next((p for p in stem if key.startswith(p)), None)
        mmseg["backbone." + (stem[prefix] + key[len(prefix):] if prefix else key)] = value
    mmseg["decode_head.conv_seg.weight"] = torch.zeros(150, 512, 1, 1)
    torch.save({"state_dict": mmseg, "meta": {}}, tmp_path / "mmseg.pth")
    encoder = build_backbone(name, checkpoint=str(tmp_path / "mmseg.pth"))
    assert _assert_encoder_holds(encoder.body, state) == encoder.weights.loaded and not encoder.weights.missing
