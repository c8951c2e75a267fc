"""MMSegmentation 1.2.2 as the reference (``../shared/PEERS.md``): importing it without compiled
ops, its packaged configs and tools, and weights that make a comparison mean something.

mmcv-lite has no compiled ops (``mmcv._ext``), and ``mmseg.models`` imports ``mmcv.ops`` when
it loads: a stand-in module whose every function raises takes its place. Nothing compared here
calls a compiled op; a test that did would fail with that op's name."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn


class _CompiledOpsStandIn(types.ModuleType):
    """``mmcv._ext`` for mmcv-lite: any op looked up raises ``NotImplementedError`` naming it when called."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise NotImplementedError(f"mmcv._ext.{name}: a compiled op that mmcv-lite does not have")
        return missing


def import_mmseg():
    """``mmseg`` with its modules registered, or the test skipped saying it is not importable."""
    if importlib.util.find_spec("mmcv") is not None and "mmcv._ext" not in sys.modules \
            and importlib.util.find_spec("mmcv._ext") is None:
        stand_in = _CompiledOpsStandIn("mmcv._ext")
        stand_in.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", loader=None)  # MMEngine: "not mmcv-full"
        sys.modules["mmcv._ext"] = stand_in
    mmseg = pytest.importorskip("mmseg", reason="MMSegmentation is not importable here (pip install "
                                                "mmsegmentation==1.2.2 mmengine==0.10.7 mmcv-lite==2.1.0 ftfy regex)")
    from mmseg.utils import register_all_modules

    register_all_modules()
    return mmseg


def load_module(path: Path, name: str):
    """A Python file (an MMSegmentation tool) imported as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Weights that make a comparison mean something: convolutions, linear layers and packed
    attention projections N(0, 1/fan_in),
    norm scales 1 +- 0.2, shifts and biases +- 0.2, BatchNorm statistics away from 0/1,
    relative-position tables N(0, 0.5). Eval-mode maps of a freshly initialised model are
    near-constant, and every comparison of them passes."""
    generator = torch.Generator().manual_seed(seed)

    def normal(like, std=1.0, mean=0.0):
        return torch.randn(like.shape, generator=generator) * std + mean

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            module.weight.copy_(normal(module.weight, fan_in ** -0.5))
            if module.bias is not None:
                module.bias.copy_(normal(module.bias, 0.2))
        elif isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:  # packed q, k, v
            module.in_proj_weight.copy_(normal(module.in_proj_weight, module.embed_dim ** -0.5))
            if module.in_proj_bias is not None:
                module.in_proj_bias.copy_(normal(module.in_proj_bias, 0.2))
        elif isinstance(module, (nn.LayerNorm, nn.modules.batchnorm._NormBase, nn.GroupNorm)):
            if module.weight is not None:
                module.weight.copy_(normal(module.weight, 0.2, 1.0))
                module.bias.copy_(normal(module.bias, 0.2))
            if getattr(module, "running_mean", None) is not None:
                module.running_mean.copy_(normal(module.running_mean, 0.2))
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    for name, parameter in model.named_parameters():
        if name.endswith("relative_position_bias_table"):
            parameter.copy_(normal(parameter, 0.5))
    return model


# MMSegmentation's decode and auxiliary heads under segheads' names (``backbones/necks/mmseg.py``,
# ``harness.modeling.AuxiliaryFCNHead``), per decoder: (MMSeg prefix pattern, segheads prefix).
# A ConvModule's ``conv``/``bn`` are segheads' ``0``/``1`` (``conv_norm_act``); a depthwise-separable
# module's depthwise conv and BN are ``0``/``1``, its pointwise ConvModule ``3``.
_HEADS = {
    "fcn": [(r"decode_head\.convs\.(\d+)\.", r"neck.convs.\1."), (r"decode_head\.conv_cat\.", "neck.fuse.")],
    "upernet": [(r"decode_head\.psp_modules\.(\d+)\.1\.", r"neck.pools.\1.1."),
                (r"decode_head\.bottleneck\.", "neck.bottleneck."),
                (r"decode_head\.lateral_convs\.(\d+)\.", r"neck.laterals.\1."),
                (r"decode_head\.fpn_convs\.(\d+)\.", r"neck.outputs.\1."),
                (r"decode_head\.fpn_bottleneck\.", "neck.fuse.")],
    "segformer": [(r"decode_head\.convs\.(\d+)\.", r"neck.project.\1."), (r"decode_head\.fusion_conv\.", "neck.fuse.")],
    "hrnet_fcn": [(r"decode_head\.convs\.0\.", "neck.fuse.")],
    "deeplabv3plus": [(r"decode_head\.image_pool\.1\.", "neck.image_pool.1."),
                      (r"decode_head\.aspp_modules\.0\.", "neck.branches.0."),
                      (r"decode_head\.aspp_modules\.(\d+)\.depthwise_conv\.", r"neck.branches.\1."),
                      (r"decode_head\.aspp_modules\.(\d+)\.pointwise_conv\.", r"neck.branches.\1.3."),
                      (r"decode_head\.bottleneck\.", "neck.bottleneck."),
                      (r"decode_head\.c1_bottleneck\.", "neck.low_level."),
                      (r"decode_head\.sep_bottleneck\.(\d+)\.depthwise_conv\.", r"neck.decoder.\1."),
                      (r"decode_head\.sep_bottleneck\.(\d+)\.pointwise_conv\.", r"neck.decoder.\1.3.")],
    "ocr": [(r"decode_head\.0\.convs\.0\.", "neck.regions.0."), (r"decode_head\.0\.conv_seg\.", "neck.regions.1."),
            (r"decode_head\.1\.bottleneck\.", "neck.bottleneck."),
            (r"decode_head\.1\.object_context_block\.query_project\.(\d+)\.", r"neck.query.\1."),
            (r"decode_head\.1\.object_context_block\.key_project\.(\d+)\.", r"neck.key.\1."),
            (r"decode_head\.1\.object_context_block\.value_project\.", "neck.value."),
            (r"decode_head\.1\.object_context_block\.out_project\.", "neck.out."),
            (r"decode_head\.1\.object_context_block\.bottleneck\.", "neck.fuse."),
            (r"decode_head\.1\.conv_seg\.", "classifier.projection.")],
}
_COMMON = [(r"decode_head\.conv_seg\.", "classifier.projection."),
           (r"auxiliary_head\.convs\.0\.", "auxiliary.conv."), (r"auxiliary_head\.conv_seg\.", "auxiliary.classifier.")]


def _head_name(key: str, decoder: str) -> str | None:
    """Segheads' name of an MMSeg decode/auxiliary head tensor, or None for an encoder's."""
    for pattern, replacement in _HEADS[decoder] + _COMMON:
        if re.match(pattern, key):
            renamed = re.sub(pattern, replacement, key, count=1)
            return re.sub(r"\.conv\.(weight|bias)$", r".0.\1", re.sub(r"\.bn\.(\w+)$", r".1.\1", renamed))
    if key.startswith(("decode_head.", "auxiliary_head.")):
        raise KeyError(f"no segheads name for MMSeg's {key} ({decoder})")
    return None


def mmseg_state_to_segheads(mmseg_state: dict, segheads_state: dict, decoder: str):
    """(segheads' state dict with MMSeg's decode and auxiliary heads placed, and for every segheads
    parameter or buffer, (MMSeg's name, a view of its tensor) that equals it). Heads are mapped by
    name (``_HEADS``); the encoder, loaded by segheads from MMSeg's file, by value: a tensor equal
    to MMSeg's reshaped (a 1x1 conv as a linear layer) or to one third of it (a packed q/k/v)."""
    state, correspondence = dict(segheads_state), {}
    for key, value in mmseg_state.items():
        name = _head_name(key, decoder)
        if name is None:
            continue
        if name not in state or state[name].shape != value.shape:
            raise KeyError(f"MMSeg's {key} {tuple(value.shape)} has no place in segheads ({name})")
        state[name] = value
        correspondence[name] = (key, lambda t: t)
    encoder = {k: v for k, v in mmseg_state.items() if k.startswith("backbone.") and v.is_floating_point()}
    for name, value in state.items():
        if name in correspondence or not name.startswith("backbone.") or not value.is_floating_point():
            continue
        correspondence[name] = _same_values(name, value, encoder)
    unplaced = [k for k in segheads_state if k not in correspondence and segheads_state[k].is_floating_point()
                and not k.endswith(("running_mean", "running_var"))]
    if unplaced:
        raise KeyError(f"segheads tensors with no MMSeg counterpart: {unplaced[:5]}")
    return state, correspondence


def _same_values(name: str, value, encoder: dict):
    for key, candidate in encoder.items():
        if candidate.numel() == value.numel() and torch.equal(candidate.reshape(value.shape), value):
            return key, lambda t, shape=value.shape: t.reshape(shape)
        if candidate.numel() == 3 * value.numel():
            for part, chunk in enumerate(candidate.chunk(3)):
                if chunk.shape == value.shape and torch.equal(chunk, value):
                    return key, lambda t, part=part: t.chunk(3)[part]
    raise KeyError(f"segheads' {name} equals no MMSeg encoder tensor")
