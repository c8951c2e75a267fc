"""Datasets registered when ``harness.data`` is imported, and the folder-pair helper."""

from __future__ import annotations

from pathlib import Path

from harness.data.catalog import DatasetCatalog, MetadataCatalog
from harness.data.digits import BACKGROUND, DIGIT_CLASSES, ensure_digits
from harness.data.sem_seg import load_sem_seg


def register_sem_seg(
    name: str,
    image_root: str | Path,
    gt_root: str | Path,
    stuff_classes: list[str],
    ignore_label: int = 255,
    image_ext: str = "jpg",
    gt_ext: str = "png",
    **metadata,
) -> None:
    """Register a generic folder pair, as detectron2's ``load_sem_seg`` datasets are."""
    DatasetCatalog.register(name, lambda: load_sem_seg(gt_root, image_root, gt_ext=gt_ext, image_ext=image_ext))
    MetadataCatalog.get(name).set(
        image_root=str(image_root), sem_seg_root=str(gt_root), image_ext=image_ext, gt_ext=gt_ext,
        stuff_classes=list(stuff_classes), ignore_label=ignore_label, evaluator_type="sem_seg", **metadata,
    )


def _register_digits() -> None:
    classes = DIGIT_CLASSES + ["background"]
    assert classes.index("background") == BACKGROUND
    for split in ("train", "val"):
        name = f"digits_sem_seg_{split}"

        def _load(split: str = split) -> list[dict]:
            root = ensure_digits()
            return load_sem_seg(root / "annotations" / split, root / "images" / split, gt_ext="png", image_ext="png")

        DatasetCatalog.register(name, _load)
        # Mirrored digits are other shapes, so flips are not label-preserving here.
        MetadataCatalog.get(name).set(stuff_classes=classes, ignore_label=255, evaluator_type="sem_seg", allow_hflip=False)


_register_digits()
