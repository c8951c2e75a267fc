"""A cell's trunk (backbone + neck) from trained weights: reading the weights a resolved ``trunk``
section points to (``read_trunk``, ``trunk_digest``) and putting them into a fresh ``Segmentor``,
frozen unless ``trunk.train`` (``attach_trunk``)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch

from harness.config import TrunkConfig
from harness.engine.checkpoint import STATE_FILE
from harness.errors import InputError
from harness.modeling import Segmentor

TRUNK_PREFIXES = ("backbone.", "neck.")  # the state-dict entries a trunk provides


def trunk_digest(data: bytes) -> str:
    """The first 16 hex of ``data``'s SHA-256: what ``trunk.digest`` pins."""
    return hashlib.sha256(data).hexdigest()[:16]


def trunk_file(path: str | Path) -> Path:
    """The weights file of a ``trunk.checkpoint``: the file itself, or a checkpoint folder's ``state.pt``."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.is_file():
        raise InputError(f"trunk.checkpoint={str(path)!r}: no such file; expected a weights.pt state dict or a "
                         f"training checkpoint ({STATE_FILE} or its folder)")
    return path


def trunk_state(data: bytes, where: str) -> dict[str, torch.Tensor]:
    """The state dict in weights file ``data`` (a ``weights.pt`` state dict or a training checkpoint's
    ``state.pt``, whose ``model`` it is), read with ``weights_only=True``."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{where}: not a state dict torch.load(weights_only=True) reads ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not any(isinstance(k, str) and k.startswith(TRUNK_PREFIXES) for k in state):
        raise InputError(f"{where}: holds no backbone.* or neck.* weights; expected a segmentor's state dict")
    return state


def read_trunk(trunk: TrunkConfig) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, digest) of a resolved trunk's ``checkpoint`` file; ``InputError`` when its digest
    is not the ``trunk.digest`` the cell was hashed with (the weights changed since)."""
    if trunk.checkpoint is None:
        raise InputError(f"trunk.run={trunk.run!r} is not resolved to a file; a grid or segheads run resolves it "
                         "(harness.tracking.resolve_trunks)")
    path = trunk_file(trunk.checkpoint)
    data = path.read_bytes()
    digest = trunk_digest(data)
    if trunk.digest is not None and digest != trunk.digest:
        raise InputError(f"trunk.checkpoint={str(path)!r}: its weights changed since the cell was set up "
                         f"(digest {digest}, expected {trunk.digest}); run the grid again to pick up the new trunk")
    return trunk_state(data, f"trunk.checkpoint={str(path)!r}"), digest


def attach_trunk(model: Segmentor, state: dict[str, torch.Tensor], trunk: TrunkConfig) -> None:
    """Copy every backbone and neck weight of ``model`` from ``state`` (the trunk must be the same
    backbone and neck: ``InputError`` naming the first entry it lacks or has at another shape),
    then freeze the trunk unless ``trunk.train``."""
    own = {k: v for k, v in model.state_dict().items() if k.startswith(TRUNK_PREFIXES)}
    for key, value in own.items():
        if key not in state:
            raise InputError(f"{trunk.describe()}: has no {key}; the trunk must be this cell's backbone and neck "
                             "(model.backbone, model.neck, model.embed_dim, model.neck_kwargs)")
        if state[key].shape != value.shape:
            raise InputError(f"{trunk.describe()}: {key} is {list(state[key].shape)}, this cell's is "
                             f"{list(value.shape)}; the trunk must be this cell's backbone and neck")
    model.load_state_dict({k: state[k] for k in own}, strict=False)
    if not trunk.train:
        model.freeze_trunk()
