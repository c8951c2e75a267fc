"""Backbone registry: timm names work as-is; other encoders register a builder here.

Contract for a builder registered with ``@register_backbone(name)``: called as
``builder(**kw)``, it returns an ``nn.Module`` whose ``forward(images)`` gives a
list of NCHW tensors (finest first) and which has ``channels`` and ``strides``
lists describing them.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable

import timm
from torch import nn

from backbones.timm_backbone import TimmBackbone
from harness.errors import InputError
from harness.registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")
register_backbone = BACKBONES.register


def list_backbones(pattern: str | None = None) -> list[str]:
    """Registered encoders plus every timm model name, filtered by a shell-style pattern."""
    names = sorted(set(BACKBONES.names()) | set(timm.list_models()))
    return names if pattern is None else fnmatch.filter(names, pattern)


def build_backbone(name: str, **kw) -> nn.Module:
    """Build encoder ``name`` (``pretrained=False`` unless asked; ``checkpoint=PATH`` loads weights)."""
    check_backbone(name)
    if name in BACKBONES:
        return BACKBONES.get(name)(**kw)
    return TimmBackbone(name, **kw)


def check_backbone(name: str) -> None:
    """``InputError`` with close matches unless ``name`` is a registered encoder or a timm model."""
    if name in BACKBONES or timm.is_model(name):
        return
    close = difflib.get_close_matches(name, list_backbones(), n=5, cutoff=0.6)
    hint = f"close matches: {', '.join(close)}" if close else "see `segheads list backbones`"
    raise InputError(f"unknown backbone {name!r}; expected a timm model name or a registered encoder ({hint})")
