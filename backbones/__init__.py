"""Encoders and necks that produce the pixel features classifier heads consume."""

from backbones import paper_encoders  # noqa: F401  (registers the papers' encoders)
from backbones.build import build_backbone, check_backbone, list_backbones, register_backbone
from backbones.features import Features
from backbones.necks import build_neck, list_necks, register_neck

__all__ = [
    "Features",
    "build_backbone",
    "check_backbone",
    "build_neck",
    "list_backbones",
    "list_necks",
    "register_backbone",
    "register_neck",
]
