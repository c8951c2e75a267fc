"""A dataset name's two catalog splits and its label space."""

from __future__ import annotations

from pathlib import Path

from harness.data.builtin import SPLIT_NAMES
from harness.data.catalog import DatasetCatalog, MetadataCatalog
from harness.errors import InputError

SPLITS = ("train", "val")


def dataset_splits(name: str) -> dict[str, str]:
    """Catalog names of ``name``'s train and val splits (``<name>_train``/``<name>_val``, or
    ``SPLIT_NAMES``); ``InputError`` listing the datasets that have both."""
    splits = SPLIT_NAMES.get(name) or {split: f"{name}_{split}" for split in SPLITS}
    if not all(s in DatasetCatalog for s in splits.values()):
        bases = {n.removesuffix("_train") for n in DatasetCatalog.list() if n.endswith("_train")}
        known = sorted({b for b in bases if f"{b}_val" in DatasetCatalog and _is_sem_seg(f"{b}_train")}
                       | set(SPLIT_NAMES))
        raise InputError(f"unknown dataset {name!r}: needs {splits['train']!r} and {splits['val']!r} registered; "
                         f"known datasets: {', '.join(known)}")
    return splits


def _is_sem_seg(split: str) -> bool:
    """Whether ``split``'s metadata describes semantic segmentation (detectron2's catalogs also
    hold detection, instance and panoptic datasets)."""
    meta = MetadataCatalog.get(split)
    return meta.get("stuff_classes") is not None and "sem_seg" in meta.get("evaluator_type", "sem_seg")


def label_space(dataset: str) -> tuple[list[str], int]:
    """(class names, ignore label) of ``dataset``'s training split."""
    meta = MetadataCatalog.get(dataset_splits(dataset)["train"])
    return list(meta.stuff_classes), meta.get("ignore_label", 255)


def missing_splits(dataset: str) -> list[str]:
    """``dataset``'s splits whose image or label folder (their metadata's ``image_root`` /
    ``sem_seg_root``) is not on this machine, each as ``<split> (<folder> not found)``; splits
    without folders in their metadata (built-in digits, a user's loader) are never named."""
    missing = []
    for split in dataset_splits(dataset).values():
        meta = MetadataCatalog.get(split)
        absent = [root for root in (meta.get("image_root"), meta.get("sem_seg_root")) if root and not Path(root).is_dir()]
        if absent:
            missing.append(f"{split} ({absent[0]} not found)")
    return missing
