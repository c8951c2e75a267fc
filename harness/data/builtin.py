"""Datasets registered when ``harness.data`` is imported, and the folder-pair helpers.

Built in: ``digits_sem_seg`` (generated), and the papers' datasets by detectron2's names,
read from ``$DETECTRON2_DATASETS`` (default ``./datasets``) when a run asks for them (the
layouts are in ``harness.data.prepare``, which makes them from the downloads). Where
detectron2 is importable and registers a split itself (ADE20K, Cityscapes), its
registration is used as it is; the class names here are detectron2's, so a split has the
same label space and evaluation keys (``IoU-road, route``) with or without detectron2.
``SEGHEADS_DATASETS`` names modules (comma-separated) imported after the built-ins, to
register a user's datasets, in segheads' or detectron2's catalogs, in every process of a
run (the CLI, a grid's Ray workers):

| dataset (grid axis) | splits | classes |
|---|---|---|
| ``ade20k_sem_seg`` | ``ade20k_sem_seg_{train,val}`` | 150 |
| ``cityscapes_fine_sem_seg`` | ``cityscapes_fine_sem_seg_{train,val}`` | 19 |
| ``coco_stuff_164k_sem_seg`` | ``coco_2017_{train,val}_stuff_sem_seg`` | 171 |
| ``coco_stuff_10k_sem_seg`` | ``coco_2017_{train,test}_stuff_10k_sem_seg`` | 171 |
| ``pascal_context_59_sem_seg`` | ``pascal_context_59_sem_seg_{train,val}`` | 59 |
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from harness.data.catalog import DatasetCatalog, MetadataCatalog
from harness.data.classes import ADE20K_150, CITYSCAPES_19, COCO_STUFF_171, PASCAL_CONTEXT_59
from harness.data.digits import BACKGROUND, DIGIT_CLASSES, ensure_digits
from harness.data.sem_seg import load_pairs, load_sem_seg
from harness.errors import InputError

# Datasets whose split names do not follow ``<dataset>_train`` / ``<dataset>_val``.
SPLIT_NAMES: dict[str, dict[str, str]] = {}


def register_sem_seg(
    name: str,
    image_root: str | Path,
    gt_root: str | Path,
    stuff_classes: list[str],
    ignore_label: int = 255,
    image_ext: str | None = None,
    gt_ext: str = "png",
    **metadata,
) -> None:
    """Register a generic folder pair, as detectron2's ``load_sem_seg`` datasets are
    (``image_ext`` None: jpg, or the one image extension ``image_root`` holds, found when
    the dataset is first loaded)."""
    register_folder_pair(name, image_root, gt_root, stuff_classes, ignore_label,
                         f".{image_ext.lstrip('.')}" if image_ext else None, f".{gt_ext}", **metadata)


def register_folder_pair(name: str, image_root: str | Path, gt_root: str | Path, stuff_classes: list[str],
                         ignore_label: int = 255, image_suffix: str | None = ".jpg", gt_suffix: str = ".png",
                         **metadata) -> None:
    """Register a folder pair whose files pair by relative path without ``*_suffix``
    (an extension, or a whole ending such as Cityscapes' ``_leftImg8bit.png``; an
    ``image_suffix`` of None is detected, ``sem_seg.image_suffix_for``)."""
    DatasetCatalog.register(name, lambda: load_pairs(gt_root, image_root, gt_suffix, image_suffix))
    MetadataCatalog.get(name).set(
        image_root=str(image_root), sem_seg_root=str(gt_root), image_suffix=image_suffix, gt_suffix=gt_suffix,
        stuff_classes=list(stuff_classes), ignore_label=ignore_label, evaluator_type="sem_seg", **metadata,
    )


def datasets_root() -> Path:
    """``$DETECTRON2_DATASETS``, default ``./datasets`` (detectron2's convention)."""
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def _register_folder_pair_once(name: str, *args, **kwargs) -> None:
    """``register_folder_pair`` unless ``name`` is registered already: detectron2's built-in
    splits (ADE20K, Cityscapes) keep detectron2's registration, loader and metadata."""
    if name not in DatasetCatalog:
        register_folder_pair(name, *args, **kwargs)


def _register_papers_datasets(root: Path) -> None:
    """The layouts ``segheads prepare-data`` writes (``harness.data.prepare``), detectron2's where it has one."""
    ade = root / "ADEChallengeData2016"
    for split, folder in (("train", "training"), ("val", "validation")):
        _register_folder_pair_once(f"ade20k_sem_seg_{split}", ade / "images" / folder,
                                   ade / "annotations_detectron2" / folder, ADE20K_150)
    city = root / "cityscapes"
    for split in ("train", "val"):
        _register_folder_pair_once(f"cityscapes_fine_sem_seg_{split}", city / "leftImg8bit" / split,
                                   city / "gtFine" / split, CITYSCAPES_19, image_suffix="_leftImg8bit.png",
                                   gt_suffix="_gtFine_labelTrainIds.png")
    coco = root / "coco"
    stuff = list(COCO_STUFF_171.values())
    for split in ("train", "val"):
        _register_folder_pair_once(f"coco_2017_{split}_stuff_sem_seg", coco / f"{split}2017",
                                   coco / "stuffthingmaps_detectron2" / f"{split}2017", stuff)
    SPLIT_NAMES["coco_stuff_164k_sem_seg"] = {"train": "coco_2017_train_stuff_sem_seg",
                                              "val": "coco_2017_val_stuff_sem_seg"}
    ten_k = coco / "coco_stuff_10k"
    for split in ("train", "test"):
        _register_folder_pair_once(f"coco_2017_{split}_stuff_10k_sem_seg", ten_k / "images_detectron2" / split,
                                   ten_k / "annotations_detectron2" / split, stuff)
    SPLIT_NAMES["coco_stuff_10k_sem_seg"] = {"train": "coco_2017_train_stuff_10k_sem_seg",
                                             "val": "coco_2017_test_stuff_10k_sem_seg"}
    context = root / "pascal_ctx_d2"
    for split, folder in (("train", "training"), ("val", "validation")):
        _register_folder_pair_once(f"pascal_context_59_sem_seg_{split}", context / "images" / folder,
                                   context / "annotations_ctx59" / folder, PASCAL_CONTEXT_59)


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


def import_user_datasets() -> None:
    """Import the modules ``SEGHEADS_DATASETS`` names (comma-separated): a user's registrations.
    ``harness.data`` calls it once it has every name, so those modules may import from it."""
    for module in filter(None, (name.strip() for name in os.environ.get("SEGHEADS_DATASETS", "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise InputError(f"SEGHEADS_DATASETS: cannot import {module!r} ({exc}); expected importable modules "
                             "(on PYTHONPATH) that register datasets, comma-separated") from None


_register_digits()
_register_papers_datasets(datasets_root())
