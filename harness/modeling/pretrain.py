"""Where an encoder's first weights come from: ``model.backbone_kwargs.checkpoint``.

``weights:<file>`` is ``<file>`` under ``$SEGHEADS_WEIGHTS`` (default ``./weights``), read on the
node that trains the cell, so a spec names ImageNet weights the same way on every machine
(``jobs/papers/*.yaml``); any other value but ``builtin:`` is a path as it is.

Built-in backbone weights: ``model.backbone_kwargs.checkpoint: builtin:digits``.

Every paper head here was trained on an ImageNet-pretrained encoder, and some heads
depend on it: ProtoSeg's code normalises the class scores with a LayerNorm, which
removes the "less background" part of the gradient of a digit pixel predicted as
background, so from random weights on the 90 %-background digits scenes it needs
thousands of iterations to start separating digits (README, "Heads"). segheads
downloads nothing, so its stand-in for ImageNet is classification of single digits
(``harness.data.digits.make_digit_crop``) drawn from the *train* half of the digit
samples only (the val scenes' digits are never trained on; they only score the result).

Recipe (``_VERSION``): 16,384 crops of 32 px drawn once (seed 0); the encoder, a
global average pool of its last map and a linear layer over the 10 digits; 1,500
AdamW steps of 64 crops, lr 1e-3 with 150 warm-up steps and poly decay, weight decay
0.05 (``harness.engine``'s optimiser and schedule); the torch threads the caller set.
For resnet10t on one core it takes about 2 minutes and gets 84 % of 1,000 crops of the
held-out (val half) digits right (lr 3e-3 reached 54-89 % depending on the seed: the loss
sits on a plateau until the shapes are found; 1e-3 gave 80-84 % over three seeds). The
global RNG is left as it was, so a cell seeded before it builds the same model whether
the weights were cached or not.

The encoder's state dict is cached once per machine under ``<cache>/pretrained/``
(``$SEGHEADS_CACHE``, default ``~/.cache/segheads``), keyed by recipe version,
backbone, its other ``backbone_kwargs`` and steps; a JSON beside it records the
accuracy, time and threads. Cells that need the same weights on one machine wait on
an ``flock``; the file appears by rename, so a crash leaves nothing half-written.
On a cluster each node makes its own copy the first time (same seed and recipe).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones import build_backbone
from harness.config import TrainConfig
from harness.data.digits import DIGIT_CLASSES, cache_root, digit_pools, make_digit_crop
from harness.errors import InputError
from harness.files import staged_file
from harness.logs import logger
from harness.modeling.segmentor import IMAGENET_MEAN, IMAGENET_STD
from harness.solver import build_optimizer, build_scheduler

BUILTIN_PREFIX = "builtin:"
WEIGHTS_PREFIX = "weights:"  # a file under $SEGHEADS_WEIGHTS
BUILTIN_WEIGHTS = ("digits",)
_VERSION = "v1"
_SEED = 0
_CROP_SIZE = 32
_NUM_CROPS = 16384
_NUM_EVAL_CROPS = 1000
_BATCH = 64
_RECIPE = TrainConfig(iters=1500, lr=1e-3, weight_decay=0.05, warmup_iters=150)


def resolve_backbone_kwargs(backbone: str, kwargs: dict) -> dict:
    """``kwargs`` with ``checkpoint: builtin:<weights>`` replaced by the path of those weights
    (made on first use), ``weights:<file>`` by ``$SEGHEADS_WEIGHTS/<file>``; any other ``kwargs`` unchanged."""
    checkpoint = kwargs.get("checkpoint")
    if isinstance(checkpoint, str) and checkpoint.startswith(WEIGHTS_PREFIX):
        problem = missing_weights(kwargs)
        if problem:
            raise InputError(problem)
        return {**kwargs, "checkpoint": str(weights_root() / checkpoint[len(WEIGHTS_PREFIX):])}
    if not (isinstance(checkpoint, str) and checkpoint.startswith(BUILTIN_PREFIX)):
        return dict(kwargs)
    if checkpoint[len(BUILTIN_PREFIX):] not in BUILTIN_WEIGHTS:
        known = ", ".join(BUILTIN_PREFIX + name for name in BUILTIN_WEIGHTS)
        raise InputError(f"model.backbone_kwargs.checkpoint: unknown built-in weights {checkpoint!r}; "
                         f"expected a file path or one of: {known}")
    others = without_checkpoint(kwargs)
    return {**others, "checkpoint": str(ensure_digits_backbone(backbone, others))}


def weights_root() -> Path:
    """``$SEGHEADS_WEIGHTS``, default ``./weights``: where ``checkpoint: weights:<file>`` is read."""
    return Path(os.environ.get("SEGHEADS_WEIGHTS", "weights"))


def missing_weights(kwargs: dict) -> str | None:
    """Why the ``weights:<file>`` ``kwargs`` name is not under ``$SEGHEADS_WEIGHTS`` on this machine,
    as one line; None when it is, or when they name no such file (a plain path fails its own cell,
    naming the file, when the cell builds its model)."""
    checkpoint = kwargs.get("checkpoint")
    if not (isinstance(checkpoint, str) and checkpoint.startswith(WEIGHTS_PREFIX)):
        return None
    path = weights_root() / checkpoint[len(WEIGHTS_PREFIX):]
    if path.is_file():
        return None
    where = (f"$SEGHEADS_WEIGHTS={os.environ['SEGHEADS_WEIGHTS']}" if "SEGHEADS_WEIGHTS" in os.environ
             else "$SEGHEADS_WEIGHTS is unset, so ./weights")
    return (f"model.backbone_kwargs.checkpoint {checkpoint}: {path} not found ({where}); put the file there "
            "or point SEGHEADS_WEIGHTS at the folder that holds it")


def describe_weights(kwargs: dict) -> str:
    """An encoder's first weights as a dry run lists them: the checkpoint named, the hub's, or none."""
    if kwargs.get("checkpoint"):
        missing = " (not on this machine)" if missing_weights(kwargs) else ""
        return str(kwargs["checkpoint"]) + ("" if kwargs.get("checkpoint_strict", True) else " (not strict)") + missing
    return "hub (pretrained: true)" if kwargs.get("pretrained") else "none (random init)"


def uncached_builtin_weights(backbone: str, kwargs: dict) -> Path | None:
    """Where the built-in weights ``kwargs`` name will be cached if this machine has not made
    them yet; None when it has, or when ``kwargs`` name none."""
    if kwargs.get("checkpoint") != BUILTIN_PREFIX + "digits":
        return None
    path = _digits_backbone_path(backbone, without_checkpoint(kwargs), _RECIPE.iters)
    return None if path.is_file() else path


def ensure_digits_backbone(backbone: str, backbone_kwargs: dict | None = None, steps: int = _RECIPE.iters) -> Path:
    """Path of ``backbone``'s encoder state dict pretrained on digit classification, made once."""
    backbone_kwargs = dict(backbone_kwargs or {})
    path = _digits_backbone_path(backbone, backbone_kwargs, steps)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second cell on this machine waits, then loads
        if path.is_file():
            return path
        logger.info(f"pretraining {backbone} on digit classification ({steps} steps), once; cached at {path}")
        state, record = _pretrain(backbone, backbone_kwargs, steps)
        with staged_file(path) as staging:  # one writer: the lock holder
            torch.save(state, staging)
            path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
        logger.info(f"{backbone}: {record['accuracy']:.1%} on {_NUM_EVAL_CROPS} crops of held-out digits "
                    f"after {record['seconds']:.0f} s")
    return path


INITIAL_WEIGHTS = ("checkpoint", "pretrained")  # backbone_kwargs that name where an encoder's first weights come from


def without_checkpoint(kwargs: dict, keys: tuple[str, ...] = ("checkpoint",)) -> dict:
    """``backbone_kwargs`` without ``keys`` (default: no initial weights file named;
    ``INITIAL_WEIGHTS``: no initial weights at all, not even the model hub's)."""
    return {key: value for key, value in kwargs.items() if key not in keys}


def _digits_backbone_path(backbone: str, backbone_kwargs: dict, steps: int) -> Path:
    digest = hashlib.sha1(json.dumps(backbone_kwargs, sort_keys=True).encode()).hexdigest()[:10]
    return cache_root() / "pretrained" / f"{_VERSION}-digits-{backbone}-{digest}-{steps}steps.pt"


class _DigitClassifier(nn.Module):
    """Encoder, global average pool of its last map, linear layer over the 10 digits."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.fc = nn.Linear(encoder.channels[-1], len(DIGIT_CLASSES))

    def forward(self, images: Tensor) -> Tensor:
        return self.fc(self.encoder(images)[-1].mean(dim=(2, 3)))


def _crops(pool: tuple[np.ndarray, np.ndarray], count: int, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """``count`` crops, normalised once as ``Segmentor`` normalises its input, and their digits."""
    pairs = [make_digit_crop(rng, pool, _CROP_SIZE) for _ in range(count)]
    images = torch.from_numpy(np.stack([image for image, _ in pairs])).permute(0, 3, 1, 2).float()
    images = (images - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return images, torch.tensor([label for _, label in pairs])


def _pretrain(backbone: str, backbone_kwargs: dict, steps: int) -> tuple[dict, dict]:
    began = time.perf_counter()
    pools = digit_pools(_SEED)
    rng = np.random.default_rng(_SEED)
    images, labels = _crops(pools["train"], _NUM_CROPS, rng)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        encoder = build_backbone(backbone, **backbone_kwargs)
        if not isinstance(getattr(encoder, "body", None), nn.Module):
            raise InputError(f"model.backbone_kwargs.checkpoint: builtin:digits needs an encoder that loads "
                             f"checkpoints into its .body; {backbone!r} has none")
        model = _DigitClassifier(encoder).train()
        recipe = dataclasses.replace(_RECIPE, iters=steps, warmup_iters=min(_RECIPE.warmup_iters, steps // 10))
        optimizer = build_optimizer(model, recipe)
        scheduler = build_scheduler(optimizer, recipe)
        order = torch.randint(len(labels), (steps, _BATCH))
        for batch in order:
            loss = F.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    held_out, held_out_labels = _crops(pools["val"], _NUM_EVAL_CROPS, rng)
    model.eval()
    with torch.no_grad():
        accuracy = float((model(held_out).argmax(dim=1) == held_out_labels).float().mean())
    record = {"backbone": backbone, "backbone_kwargs": backbone_kwargs, "recipe": _VERSION, "steps": steps,
              "accuracy": accuracy, "seconds": time.perf_counter() - began, "threads": torch.get_num_threads()}
    return encoder.body.state_dict(), record
