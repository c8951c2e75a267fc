"""Initial encoder weights: a checkpoint loaded whole into an encoder, or a one-line error.

``model.backbone_kwargs.checkpoint: PATH`` accepts, for a timm encoder:

- the encoder's own state dict (``TimmBackbone.body``'s names: segheads' built-in weights, an
  encoder saved from a trained cell), loaded as it is;
- a timm model's state dict (the names ``timm.create_model(name)`` has, e.g. an ImageNet
  checkpoint), mapped as timm's pretrained machinery maps it: the model file's own
  ``checkpoint_filter_fn`` (Swin's relative-position tables, original repositories' names),
  the classifier dropped, then onto ``features_only``'s names (``layers.0`` is ``layers_0``).

``load_state_dict_whole`` fills the encoder and returns a ``WeightsReport``: tensors loaded,
encoder tensors the file left missing, file tensors the encoder has no place for. Any missing
tensor is an ``InputError`` naming the count and the first names unless
``checkpoint_strict: false``; a file that fills nothing always is.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

from harness.errors import InputError

_SHOWN = 3  # names quoted in an error


@dataclass(frozen=True)
class WeightsReport:
    """What loading ``source`` into an encoder did (counts of tensors, the first names)."""

    source: str
    loaded: int
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]

    def params(self) -> dict[str, str]:
        """The report as a cell's ``engine.backbone_weights*`` params."""
        return {"backbone_weights": self.source, "backbone_weights_loaded": str(self.loaded),
                "backbone_weights_missing": str(len(self.missing)),
                "backbone_weights_unexpected": str(len(self.unexpected))}


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of a checkpoint file (``torch.save`` read with ``weights_only``, or
    ``.safetensors``), unwrapped from ``state_dict``/``model``; ``InputError`` naming the file otherwise."""
    if not path.is_file():
        raise InputError(f"backbone checkpoint {path} not found; expected a state dict file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"backbone checkpoint {path}: not a state dict torch can read ({type(exc).__name__})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise InputError(f"backbone checkpoint {path}: expected a mapping of names to tensors")
    return state


def load_state_dict_whole(module: nn.Module, state: dict[str, Tensor], source: str, name: str,
                          strict: bool = True) -> WeightsReport:
    """Load the tensors of ``state`` whose names and shapes ``module`` has; ``InputError`` when a
    name matches with another shape, or as ``check_complete`` says."""
    own = module.state_dict()
    wrong = [(k, v.shape, own[k].shape) for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong:
        raise wrong_shapes_error(name, source, wrong)
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    report = WeightsReport(source, sum(k in own for k in state), tuple(k for k in own if k not in state),
                           tuple(k for k in state if k not in own))
    return check_complete(report, name, strict, first_in_file=tuple(state)[:_SHOWN])


def wrong_shapes_error(name: str, source: str, wrong: list[tuple]) -> InputError:
    """The error for tensors of ``source`` whose shapes differ from the encoder's: (tensor name,
    shape in the file, shape in the encoder) each; the count and the first named."""
    first = ", ".join(f"{key} {tuple(found)} for {tuple(expected)}" for key, found, expected in wrong[:_SHOWN])
    return InputError(f"backbone {name!r}: checkpoint {source} has {len(wrong)} tensors of the wrong shape (first: {first})")


def check_complete(report: WeightsReport, name: str, strict: bool, first_in_file: tuple[str, ...] = (),
                   extra_allowed: Callable[[str], bool] | None = None) -> WeightsReport:
    """``report``, or an ``InputError`` naming the count and the first names when nothing loaded or
    (``strict``) when any encoder tensor is missing, or, given ``extra_allowed`` (which file
    tensors may be left over, e.g. a classifier), when the file has others this encoder has no place for."""
    total = report.loaded + len(report.missing)
    if report.loaded == 0:
        raise InputError(f"backbone {name!r}: checkpoint {report.source} fills none of the {total} encoder tensors "
                         f"(first names in the file: {', '.join(first_in_file or report.unexpected[:_SHOWN])}); "
                         "expected this encoder's checkpoint")
    if strict and report.missing:
        raise InputError(f"backbone {name!r}: checkpoint {report.source} fills {report.loaded} of {total} encoder "
                         f"tensors ({len(report.missing)} missing; first missing: {', '.join(report.missing[:_SHOWN])}); "
                         "expected all, or set model.backbone_kwargs.checkpoint_strict: false")
    extra = [key for key in report.unexpected if extra_allowed is not None and not extra_allowed(key)]
    if strict and extra:
        raise InputError(f"backbone {name!r}: checkpoint {report.source} has {len(extra)} tensors this encoder has "
                         f"no place for (first: {', '.join(extra[:_SHOWN])}); expected this encoder's checkpoint, or set "
                         "model.backbone_kwargs.checkpoint_strict: false")
    return report


def _flat(name: str) -> str:
    """A tensor name as ``features_only`` models flatten it (``layers.0.blocks`` -> ``layers_0_blocks``)."""
    return name.removeprefix("model.").replace(".", "_")


def timm_state_for_features(timm_name: str, state: dict[str, Tensor], create_kwargs: dict,
                            features: nn.Module) -> dict[str, Tensor]:
    """A timm model's state dict under ``features``' names, through timm's own mapping: the model
    file's ``checkpoint_filter_fn`` applied with the full model, the classifier dropped (timm's
    ``load_pretrained`` for ``features_only``), then each tensor under its ``features_only`` name.
    File names that do not map are kept as they are (reported unexpected)."""
    full = timm.create_model(timm_name, pretrained=False, **create_kwargs)
    filter_fn = getattr(sys.modules[timm.models.model_entrypoint(timm_name).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(dict(state), full)
    classifier = full.pretrained_cfg.get("classifier") or ()
    for head in (classifier,) if isinstance(classifier, str) else classifier:
        state = {k: v for k, v in state.items() if k not in (f"{head}.weight", f"{head}.bias")}
    names = {_flat(k): k for k in features.state_dict()}
    return {names.get(_flat(k), k): v for k, v in state.items()}


def is_own_layout(module: nn.Module, state: dict[str, Tensor]) -> bool:
    """Whether ``state`` uses ``module``'s own tensor names (every one of them present)."""
    return set(module.state_dict()) <= set(state)
