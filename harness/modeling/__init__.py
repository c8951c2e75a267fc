"""Model assembly: backbone -> neck -> classifier head, as one ``Segmentor``.

- ``segmentor``: ``Segmentor`` (what every cell trains, evaluates and measures) and
  ``AuxiliaryFCNHead`` (MMSegmentation's training-only FCN head on stage 3).
- ``build``: ``build_segmentor`` from a ``RunConfig``, ``load_segmentor`` with trained weights,
  ``resolve_classifier`` (a paper head's preset spelled out), ``state_dict_bytes``.
- ``init``: ``mmseg_init``, MMSegmentation's initialisation of the decoder (``model.init: mmseg``).
- ``pretrain``: where an encoder's first weights come from (``weights:<file>``, ``builtin:digits``).
"""

from harness.modeling.build import build_segmentor, load_segmentor, resolve_classifier, state_dict_bytes
from harness.modeling.init import mmseg_init
from harness.modeling.pretrain import (
    INITIAL_WEIGHTS,
    describe_weights,
    ensure_digits_backbone,
    missing_weights,
    resolve_backbone_kwargs,
    uncached_builtin_weights,
    weights_root,
    without_checkpoint,
)
from harness.modeling.segmentor import IMAGENET_MEAN, IMAGENET_STD, AuxiliaryFCNHead, Segmentor

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INITIAL_WEIGHTS",
    "AuxiliaryFCNHead",
    "Segmentor",
    "build_segmentor",
    "describe_weights",
    "ensure_digits_backbone",
    "load_segmentor",
    "mmseg_init",
    "resolve_backbone_kwargs",
    "resolve_classifier",
    "state_dict_bytes",
    "missing_weights",
    "uncached_builtin_weights",
    "weights_root",
    "without_checkpoint",
]
