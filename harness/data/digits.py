"""``digits_sem_seg``: the embedded dataset, scenes of scikit-learn's bundled digits.

Each scene is a textured background with 2-5 handwritten digits (the 8x8 UCI
digits shipped inside scikit-learn, no download). A digit's colour, size and
position are drawn independently of its class, so only its shape tells the class.
Classes: ids 0-9 are the digits, id 10 is the background. Train and val scenes
draw from disjoint halves of the digit samples. Scenes are deterministic in
(seed, split, index) and written once as PNG pairs under the cache folder, then
read through ``load_sem_seg`` like any folder dataset.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

DIGIT_CLASSES = [str(d) for d in range(10)]
BACKGROUND = 10
_VERSION = "v1"
_TRAIN_FRACTION = 0.75
_SPLIT_IDS = {"train": 0, "val": 1}


def cache_root() -> Path:
    """``$SEGHEADS_CACHE`` or ``~/.cache/segheads``."""
    return Path(os.environ.get("SEGHEADS_CACHE", Path.home() / ".cache" / "segheads"))


def digit_pools(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    cut = int(len(order) * _TRAIN_FRACTION)
    images = digits.images.astype(np.float32) / 16.0
    return {
        "train": (images[order[:cut]], digits.target[order[:cut]]),
        "val": (images[order[cut:]], digits.target[order[cut:]]),
    }


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    base = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
    coarse = rng.normal(0.0, 0.12, size=(6, 6, 3)).astype(np.float32)
    smooth = np.stack(
        [np.asarray(Image.fromarray(coarse[..., c]).resize((size, size), Image.BICUBIC)) for c in range(3)], axis=-1
    )
    grain = rng.normal(0.0, 0.04, size=(size, size, 3)).astype(np.float32)
    return np.clip(base + smooth + grain, 0.0, 1.0), base


def _contrasting_colour(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    while True:
        colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
        if np.linalg.norm(colour - base) >= 0.5:
            return colour


def _place(rng: np.random.Generator, side: int, size: int, taken: list[tuple[int, int, int]]) -> tuple[int, int] | None:
    for _ in range(20):
        y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        if all(y + side <= ty or ty + ts <= y or x + side <= tx or tx + ts <= x for ty, tx, ts in taken):
            return y, x
    return None


def make_scene(rng: np.random.Generator, pool: tuple[np.ndarray, np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 [size, size, 3], label uint8 [size, size]) pair."""
    image, base = _background(rng, size)
    label = np.full((size, size), BACKGROUND, dtype=np.uint8)
    samples, targets = pool
    taken: list[tuple[int, int, int]] = []
    for _ in range(int(rng.integers(2, 6))):
        side = int(rng.integers(size // 4, size * 7 // 16 + 1))
        spot = _place(rng, side, size, taken)
        if spot is None:
            continue
        y, x = spot
        taken.append((y, x, side))
        pick = int(rng.integers(len(targets)))
        alpha = _paste(rng, image, base, samples[pick], y, x, side)
        label[y : y + side, x : x + side][alpha >= 0.5] = targets[pick]
    return (image * 255).round().astype(np.uint8), label


def make_digit_crop(rng: np.random.Generator, pool: tuple[np.ndarray, np.ndarray], size: int) -> tuple[np.ndarray, int]:
    """One (image uint8 [size, size, 3], digit class) pair: a single digit drawn like a
    scene's (same background, colours and side range relative to the scenes' 48 px) at a
    random place, for classification pretraining (``harness.modeling.pretrain``)."""
    image, base = _background(rng, size)
    samples, targets = pool
    side = int(rng.integers(size * 3 // 8, size * 11 // 16 + 1))
    y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    pick = int(rng.integers(len(targets)))
    _paste(rng, image, base, samples[pick], y, x, side)
    return (image * 255).round().astype(np.uint8), int(targets[pick])


def _paste(rng: np.random.Generator, image: np.ndarray, base: np.ndarray, digit: np.ndarray,
           y: int, x: int, side: int) -> np.ndarray:
    """Blend ``digit`` (8x8 in [0, 1]) resized to ``side`` into ``image`` at (y, x) in a colour
    that contrasts with the background ``base``; returns its alpha [side, side]."""
    alpha = np.asarray(Image.fromarray(digit).resize((side, side), Image.BILINEAR)).clip(0.0, 1.0)
    colour = _contrasting_colour(rng, base)
    patch = image[y : y + side, x : x + side]
    image[y : y + side, x : x + side] = patch * (1 - alpha[..., None]) + colour * alpha[..., None]
    return alpha


def ensure_digits(seed: int = 0, image_size: int = 48, num_train: int = 2000, num_val: int = 300) -> Path:
    """Write the scenes once and return their folder (``images/{split}``, ``annotations/{split}``).

    Scenes are written to a temporary sibling folder that is renamed into place when complete,
    so a crash never leaves a half-written set; concurrent callers (a grid's first cells) wait
    on a file lock for the one that writes them.
    """
    root = cache_root() / "digits_sem_seg" / f"{_VERSION}-seed{seed}-{image_size}px-{num_train}-{num_val}"
    if root.is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if root.is_dir():  # written while this caller waited
            return root
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
        try:
            pools = digit_pools(seed)
            for split, count in (("train", num_train), ("val", num_val)):
                (staging / "images" / split).mkdir(parents=True)
                (staging / "annotations" / split).mkdir(parents=True)
                for index in range(count):
                    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
                    image, label = make_scene(rng, pools[split], image_size)
                    Image.fromarray(image).save(staging / "images" / split / f"{index:05d}.png")
                    Image.fromarray(label).save(staging / "annotations" / split / f"{index:05d}.png")
            staging.rename(root)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return root
