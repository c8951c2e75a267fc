"""Swin Transformer as MMSegmentation computes it (``mmseg/models/backbones/swin.py``, the encoder
of every Swin row in the papers' tables), written for segheads.

What makes it MMSegmentation's Swin rather than the classification model (timm's, the official
repository's), each checked against MMSegmentation's ``SwinTransformer`` on the same weights
(``tests/peers/test_mmseg_swin.py``):

- **pad, then shift**: each block pads its (normalised) tokens with zeros at the bottom and right
  to a multiple of the window, then rolls by half a window and masks the rolled regions
  (-100 where two tokens came from different regions); the padded tokens take part in attention
  unmasked. The classification model shifts the unpadded map.
- **every odd block shifts**, even where the map is no larger than the window (the last stage
  at 512 px: 16 x 16 tokens, window 12); the classification model turns the shift off there.
- **one LayerNorm per output** (``norm0`` .. ``norm3``) on each stage's map before it leaves;
  the classification model has one final ``norm`` only.
- patch embedding and patch merging pad the bottom and right edge to even sizes ("corner"), so
  the maps are ceil(H / 4), ceil(H / 8), ... for any input size; patch merging concatenates
  each 2 x 2 neighbourhood channel-major (``nn.Unfold``'s order: c, then row, then column).
- stochastic depth rises linearly from 0 to ``drop_path_rate`` over the blocks (0.3 in every
  MMSegmentation Swin config; the classification models' 0.1 / 0.2 / 0.5 are not used).

Weights (``checkpoint=PATH``), loaded whole or an ``InputError`` naming the count and the first
missing names (``backbones.weights``), in any of these layouts:

- MMSegmentation's: a converted ImageNet checkpoint (``swin_*_20220317-*.pth``, from
  ``tools/model_converters/swin2mmseg.py``) or a segmentor's (``backbone.*``) or this module's own;
- the official release (``microsoft/Swin-Transformer``: ``layers.*``, ``attn.qkv``, ``mlp.fc1``,
  patch merging in ``[x0, x1, x2, x3]`` order, under ``model``);
- timm's (``timm.create_model(swin_*)``: as the official one, but each patch merging at the
  start of the next stage).

An ImageNet checkpoint has no ``norm0`` .. ``norm3``: they start as new LayerNorms (weight 1,
bias 0), as MMSegmentation leaves them; a segmentor's checkpoint must have all four. Its final
``norm`` and classifier ``head`` are reported unexpected; any other tensor the encoder has no
place for is an error, as a missing one is (unless ``checkpoint_strict=False``). The
relative-position indices and attention masks some files carry are derived, not weights, and
are left out. A checkpoint trained
at another window size has its relative-position tables resized bicubically, as MMSegmentation
does (e.g. ImageNet-22K window-7 weights in a window-12 model).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.weights import WeightsReport, check_complete, read_state_dict, wrong_shapes_error
from harness.errors import InputError

_MASKED = -100.0  # MMSegmentation's attention mask value between shifted regions
# The papers' Swins (Liu et al. 2021, Table 1): widths, blocks per stage, heads per stage, window.
VARIANTS = {
    "swin_t": (96, (2, 2, 6, 2), (3, 6, 12, 24), 7),
    "swin_s": (96, (2, 2, 18, 2), (3, 6, 12, 24), 7),
    "swin_b": (128, (2, 2, 18, 2), (4, 8, 16, 32), 12),
    "swin_l": (192, (2, 2, 18, 2), (6, 12, 24, 48), 12),
}
# timm's model of the same architecture, for ``pretrained=True`` (timm downloads its weights).
_TIMM_NAMES = {("swin_t", 7): "swin_tiny_patch4_window7_224", ("swin_s", 7): "swin_small_patch4_window7_224",
               ("swin_b", 7): "swin_base_patch4_window7_224", ("swin_b", 12): "swin_base_patch4_window12_384",
               ("swin_l", 7): "swin_large_patch4_window7_224", ("swin_l", 12): "swin_large_patch4_window12_384"}


def _pad_bottom_right(x: Tensor, multiple: int, dims: tuple[int, int]) -> Tensor:
    """``x`` zero-padded at the end of its two spatial ``dims`` (channels-last: (1, 2); NCHW:
    (2, 3)) to multiples of ``multiple``."""
    pad_h, pad_w = -x.shape[dims[0]] % multiple, -x.shape[dims[1]] % multiple
    if not (pad_h or pad_w):
        return x
    return F.pad(x, (0, 0, 0, pad_w, 0, pad_h) if dims == (1, 2) else (0, pad_w, 0, pad_h))


def _drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: each sample's residual branch kept with probability 1 - ``rate`` and
    rescaled (MMCV's ``drop_path``: one uniform draw per sample, floored after adding 1 - rate)."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    kept = (keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)).floor()
    return x.div(keep) * kept


def relative_position_index(window: int) -> Tensor:
    """[window^2, window^2]: for tokens p, q of a window, the row of the relative-position table
    holding their offset, (dy + window - 1) * (2 window - 1) + dx + window - 1."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    offsets = coords[:, :, None] - coords[:, None, :] + window - 1  # [2, N, N]
    return offsets[0] * (2 * window - 1) + offsets[1]


def _shift_mask(height: int, width: int, window: int, shift: int, device) -> Tensor:
    """[windows, N, N] additive mask of a shifted block on a padded ``height`` x ``width`` map:
    0 between tokens of one region of the rolled map, -100 between regions (MMSegmentation's)."""
    regions = torch.zeros(height, width, device=device)
    spans = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for index, (rows, cols) in enumerate((r, c) for r in spans for c in spans):
        regions[rows, cols] = index
    regions = regions.view(height // window, window, width // window, window).transpose(1, 2).reshape(-1, window * window)
    different = regions[:, None, :] != regions[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill_(different, _MASKED)


class _WindowAttention(nn.Module):
    """Multi-head self-attention within windows, with a learnt relative-position bias (Swin Eq. 4).
    Names as MMSegmentation's ``WindowMSA``."""

    def __init__(self, dim: int, heads: int, window: int, attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        self.heads, self.window, self.scale = heads, window, (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, windows: Tensor, mask: Tensor | None) -> Tensor:
        """``windows`` [B * nW, N, C]; ``mask`` [nW, N, N] (shifted blocks) or None."""
        count, tokens, dim = windows.shape
        q, k, v = self.qkv(windows).view(count, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(tokens, tokens, self.heads).permute(2, 0, 1)[None]  # [1, heads, N, N]
        if mask is not None:  # [B, nW, heads, N, N] flattened as the windows are
            bias = (bias[:, None] + mask[None, :, None]).expand(count // mask.shape[0], -1, -1, -1, -1)
            bias = bias.reshape(count, self.heads, tokens, tokens)
        # MMSeg's order of operations (scale q, product, bias, softmax): equal to it bit for bit in
        # float32, where a fused attention kernel differs by 1e-5 per block.
        attention = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1) + bias.to(q.dtype)).softmax(dim=-1))
        out = attention @ v
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(count, tokens, dim)))


class _ShiftedWindowAttention(nn.Module):
    """Pad to the window, roll by ``shift``, attend within windows, roll back, crop (MMSeg's
    ``ShiftWindowMSA``); the residual branch's stochastic depth."""

    def __init__(self, dim: int, heads: int, window: int, shift: int, attn_drop: float, drop: float,
                 drop_path: float) -> None:
        super().__init__()
        self.window, self.shift, self.drop_path = window, shift, drop_path
        self.w_msa = _WindowAttention(dim, heads, window, attn_drop, drop)

    def forward(self, x: Tensor, size: tuple[int, int], mask: Tensor | None) -> Tensor:
        batch, _, dim = x.shape
        height, width = size
        w = self.window
        x = _pad_bottom_right(x.view(batch, height, width, dim), w, (1, 2))
        padded_h, padded_w = x.shape[1:3]
        if self.shift:
            x = torch.roll(x, (-self.shift, -self.shift), dims=(1, 2))
        windows = x.view(batch, padded_h // w, w, padded_w // w, w, dim).transpose(2, 3).reshape(-1, w * w, dim)
        windows = self.w_msa(windows, mask if self.shift else None)
        x = windows.view(batch, padded_h // w, padded_w // w, w, w, dim).transpose(2, 3).reshape(batch, padded_h, padded_w, dim)
        if self.shift:
            x = torch.roll(x, (self.shift, self.shift), dims=(1, 2))
        x = x[:, :height, :width].reshape(batch, height * width, dim)
        return _drop_path(x, self.drop_path, self.training)


class _FeedForward(nn.Module):
    """Linear - GELU - Dropout - Linear - Dropout, stochastic depth on the branch (MMCV's ``FFN``:
    ``layers.0.0`` and ``layers.1`` are the two linear layers)."""

    def __init__(self, dim: int, hidden: int, drop: float, drop_path: float) -> None:
        super().__init__()
        self.drop_path = drop_path
        self.layers = nn.Sequential(nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(drop)),
                                    nn.Linear(hidden, dim), nn.Dropout(drop))

    def forward(self, x: Tensor) -> Tensor:
        return _drop_path(self.layers(x), self.drop_path, self.training)


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float, attn_drop: float,
                 drop: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _ShiftedWindowAttention(dim, heads, window, shift, attn_drop, drop, drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = _FeedForward(dim, int(mlp_ratio * dim), drop, drop_path)

    def forward(self, x: Tensor, size: tuple[int, int], mask: Tensor | None) -> Tensor:
        x = x + self.attn(self.norm1(x), size, mask)
        return x + self.ffn(self.norm2(x))


class _PatchMerging(nn.Module):
    """Each 2 x 2 neighbourhood (the map padded to even sizes) concatenated channel-major, as
    ``nn.Unfold`` orders it, LayerNorm, a linear layer to twice the width without bias."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor, size: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        batch, _, dim = x.shape
        x = _pad_bottom_right(x.view(batch, *size, dim), 2, (1, 2))
        height, width = x.shape[1] // 2, x.shape[2] // 2
        x = x.view(batch, height, 2, width, 2, dim).permute(0, 1, 3, 5, 2, 4).reshape(batch, height * width, 4 * dim)
        return self.reduction(self.norm(x)), (height, width)


class _Stage(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float, attn_drop: float,
                 drop: float, drop_paths: list[float], downsample: bool) -> None:
        super().__init__()
        self.window = window
        self.blocks = nn.ModuleList(_Block(dim, heads, window, window // 2 if i % 2 else 0, mlp_ratio, attn_drop,
                                           drop, drop_paths[i]) for i in range(depth))
        self.downsample = _PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        w = self.window
        padded = (math.ceil(size[0] / w) * w, math.ceil(size[1] / w) * w)
        mask = _shift_mask(*padded, w, w // 2, x.device) if len(self.blocks) > 1 else None
        for block in self.blocks:
            x = block(x, size, mask)
        return x


class _PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.projection = nn.Conv2d(3, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.projection(_pad_bottom_right(images, self.patch, (2, 3)))
        return self.norm(x.flatten(2).transpose(1, 2)), tuple(x.shape[-2:])


class SwinTransformer(nn.Module):
    """Swin ``variant`` (``VARIANTS``: swin_t, swin_s, swin_b, swin_l) as MMSegmentation's
    ``SwinTransformer`` (module docstring): four NCHW maps at strides 4, 8, 16, 32, each through its
    own LayerNorm. ``window_size`` defaults to the variant's (7 for T/S, 12 for B/L, the papers'
    384-px ImageNet-22K models); ``drop_path_rate`` 0.3 as every MMSeg Swin config.

    Initial weights: random (MMSeg's initialisation: linear layers truncated-normal std 0.02, bias 0;
    LayerNorms 1/0; relative-position tables truncated-normal std 0.02), ``checkpoint=PATH`` (any
    layout in the module docstring, loaded whole or an ``InputError``; ``checkpoint_strict=False``
    lets tensors stay missing) or ``pretrained=True`` (timm's ImageNet weights of the same
    architecture, downloaded). ``weights`` reports what loaded."""

    def __init__(self, variant: str, *, window_size: int | None = None, drop_path_rate: float = 0.3,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, mlp_ratio: float = 4.0,
                 pretrained: bool = False, checkpoint: str | None = None, checkpoint_strict: bool = True) -> None:
        super().__init__()
        embed_dim, depths, heads, default_window = VARIANTS[variant]
        window = window_size or default_window
        if window < 2:
            raise InputError(f"backbone {variant!r}: window_size={window}; expected >= 2")
        if not 0 <= drop_path_rate < 1:
            raise InputError(f"backbone {variant!r}: drop_path_rate={drop_path_rate}; expected a value in [0, 1)")
        self.variant, self.window = variant, window
        self.patch_embed = _PatchEmbed(embed_dim, 4)
        self.drop_after_pos = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # MMSeg's float32 steps
        self.stages = nn.ModuleList(
            _Stage(embed_dim * 2**i, depth, heads[i], window, mlp_ratio, attn_drop_rate, drop_rate,
                   rates[sum(depths[:i]):sum(depths[: i + 1])], downsample=i < len(depths) - 1)
            for i, depth in enumerate(depths))
        self.channels = [embed_dim * 2**i for i in range(len(depths))]
        self.strides = [4 * 2**i for i in range(len(depths))]
        for i, width in enumerate(self.channels):
            self.add_module(f"norm{i}", nn.LayerNorm(width))
        self._init_weights()
        self.weights: WeightsReport | None = None
        if checkpoint is not None:
            self.weights = self._load(read_state_dict(Path(checkpoint)), checkpoint, checkpoint_strict)
        elif pretrained:
            self.weights = self._load(_timm_weights(variant, window), f"timm {_TIMM_NAMES.get((variant, window))}", True)

    def _init_weights(self) -> None:
        """MMSegmentation's ``SwinTransformer.init_weights`` without a checkpoint."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, _WindowAttention):
                nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)

    def forward(self, images: Tensor) -> list[Tensor]:
        x, size = self.patch_embed(images)
        x = self.drop_after_pos(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x, size)
            out = getattr(self, f"norm{i}")(x)
            outs.append(out.view(-1, *size, self.channels[i]).permute(0, 3, 1, 2).contiguous())
            if stage.downsample is not None:
                x, size = stage.downsample(x, size)
        return outs

    def _load(self, state: dict[str, Tensor], source: str, strict: bool) -> WeightsReport:
        """Fill this encoder from ``state`` (any layout of the module docstring); ``InputError`` as
        ``backbones.weights.check_complete`` says, or naming tensors of the wrong shape."""
        state = to_mmseg_layout(state)
        own = self.state_dict()
        state = _resize_position_tables(state, own)
        wrong = [(k, v.shape, own[k].shape) for k, v in state.items() if k in own and own[k].shape != v.shape]
        if wrong:
            raise wrong_shapes_error(self.variant, source, wrong)
        self.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
        output_norms = {k for k in own if _OUTPUT_NORM.match(k)}
        fresh = output_norms if not output_norms & set(state) else set()  # an ImageNet file: new output norms
        missing = tuple(k for k in own if k not in state and k not in fresh)
        report = WeightsReport(source, sum(k in own for k in state), missing, tuple(k for k in state if k not in own))
        return check_complete(report, self.variant, strict, first_in_file=tuple(state)[:3],
                              extra_allowed=_CLASSIFICATION_ONLY.match)


_OUTPUT_NORM = re.compile(r"^norm\d+\.")
_CLASSIFICATION_ONLY = re.compile(r"^(norm|head)\.")  # an ImageNet model's final norm and classifier
_DERIVED = re.compile(r"(^|\.)(relative_position_index|attn_mask)$")  # buffers some files carry: not weights
_MMSEG_PREFIX = "backbone."


def _merge_order(tensor: Tensor) -> Tensor:
    """A patch merging's norm or reduction weight from the official ``[x0, x1, x2, x3]`` order
    (neighbours (0,0), (1,0), (0,1), (1,1), each C channels) into ``nn.Unfold``'s channel-major
    order (c, then row, then column), on the last dimension."""
    *lead, four_c = tensor.shape
    blocks = tensor.reshape(*lead, 4, four_c // 4)[..., [0, 2, 1, 3], :]
    return blocks.transpose(-1, -2).reshape(*lead, four_c)


def to_mmseg_layout(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A Swin state dict in MMSegmentation's names and order, from MMSeg's own (bare or a
    segmentor's ``backbone.*``), the official release's or timm's layout; derived buffers dropped,
    other tensors (a classifier's) kept under their names."""
    if any(k.startswith(_MMSEG_PREFIX) for k in state):
        state = {k.removeprefix(_MMSEG_PREFIX): v for k, v in state.items() if k.startswith(_MMSEG_PREFIX)}
    state = {k: v for k, v in state.items() if not _DERIVED.search(k)}
    if not any(k.startswith("layers.") for k in state):
        return state  # MMSeg's names already
    if any(re.match(r"layers\.\d+\.downsample\.", k) for k in state) and not any(
            k.startswith("layers.0.downsample.") for k in state):  # timm: merging opens the next stage
        state = {re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) - 1}.downsample.", k): v
                 for k, v in state.items()}
    converted = {}
    for key, value in state.items():
        if key.startswith("layers."):
            if ".downsample." in key:
                value = _merge_order(value)
            key = (key.replace(".attn.", ".attn.w_msa.").replace(".mlp.fc1.", ".ffn.layers.0.0.")
                   .replace(".mlp.fc2.", ".ffn.layers.1.").replace("layers.", "stages.", 1))
        elif key.startswith("patch_embed.proj."):
            key = key.replace("patch_embed.proj.", "patch_embed.projection.")
        converted[key] = value
    return converted


def _resize_position_tables(state: dict[str, Tensor], own: dict[str, Tensor]) -> dict[str, Tensor]:
    """Relative-position tables of another window size resized bicubically to this model's
    (MMSegmentation's ``init_weights``); the same number of heads is required (else reported as a
    wrong shape)."""
    resized = dict(state)
    for key, table in state.items():
        if not key.endswith("relative_position_bias_table") or key not in own or own[key].shape == table.shape:
            continue
        (length, heads), (target, target_heads) = table.shape, own[key].shape
        if heads != target_heads:
            continue
        side, target_side = math.isqrt(length), math.isqrt(target)
        grid = table.permute(1, 0).reshape(1, heads, side, side)
        grid = F.interpolate(grid, size=(target_side, target_side), mode="bicubic")
        resized[key] = grid.view(heads, target).permute(1, 0).contiguous()
    return resized


def _timm_weights(variant: str, window: int) -> dict[str, Tensor]:
    """timm's pretrained weights for this architecture (downloaded by timm)."""
    import timm

    name = _TIMM_NAMES.get((variant, window))
    if name is None:
        raise InputError(f"backbone {variant!r}: timm has no pretrained {variant} at window {window}; "
                         "use checkpoint=PATH")
    try:
        return timm.create_model(name, pretrained=True).state_dict()
    except Exception as exc:  # no network, no cache
        raise InputError(f"backbone {variant!r}: cannot fetch timm's {name} weights here ({type(exc).__name__}); "
                         "use checkpoint=PATH to a local copy") from None
