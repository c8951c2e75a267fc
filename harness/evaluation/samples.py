"""The validation images a report shows for every head, and their predicted label maps as a cell keeps them.

``sample_indices`` is the one seeded draw of validation images (the cell's evaluation keeps its
predictions for them, the report shows them); ``encode_label_map`` / ``decode_label_map`` write a
label map as JSON-safe data (zlib-compressed, base64), so a report shows each head's predictions
from its cell's record instead of running its model again.
"""

from __future__ import annotations

import base64
import zlib

import numpy as np

SAMPLE_IMAGES = 6  # validation images a cell keeps predictions of, and the report shows
SAMPLE_SEED = 0


def sample_indices(records: int, count: int = SAMPLE_IMAGES, seed: int = SAMPLE_SEED) -> list[int]:
    """Positions of ``count`` of ``records`` validation images, drawn without replacement with ``seed``, sorted."""
    return sorted(int(i) for i in np.random.default_rng(seed).choice(records, min(count, records), replace=False))


def encode_label_map(labels: np.ndarray) -> dict:
    """``{"shape", "dtype", "zlib"}``: an [H, W] class-id map (uint8 below 256 classes, else uint16)."""
    labels = np.asarray(labels)
    dtype = np.uint8 if labels.size == 0 or labels.max() < 256 else np.uint16
    data = zlib.compress(np.ascontiguousarray(labels.astype(dtype)).tobytes(), 6)
    return {"shape": list(labels.shape), "dtype": np.dtype(dtype).name, "zlib": base64.b64encode(data).decode()}


def decode_label_map(data: dict) -> np.ndarray:
    """The [H, W] int64 class-id map ``encode_label_map`` wrote."""
    raw = zlib.decompress(base64.b64decode(data["zlib"]))
    return np.frombuffer(raw, dtype=data["dtype"]).reshape(data["shape"]).astype(np.int64)
