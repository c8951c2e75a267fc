"""``segheads prepare-data NAME``: the documented conversions from a dataset's download to
the layout ``harness.data.builtin`` reads, under ``$DETECTRON2_DATASETS`` (or ``root``).

The layouts, what each reads and writes, are ``harness.cli.parser.PREPARE_LAYOUTS`` (``segheads
prepare-data --help`` prints them; a test keeps them and ``PREPARERS`` the same names).

Each output folder is written under a temporary name and renamed when complete, so an
interrupted run leaves nothing that looks prepared; an existing output is left alone.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from harness.data.builtin import datasets_root
from harness.data.classes import CITYSCAPES_ID_TO_TRAIN_ID, COCO_STUFF_171, PASCAL_CONTEXT_59
from harness.errors import InputError
from harness.logs import logger

_IGNORE = 255


def _lookup(mapping: dict[int, int], size: int = 256) -> np.ndarray:
    table = np.full(size, _IGNORE, dtype=np.uint8)
    for source, target in mapping.items():
        table[source] = target
    return table


_COCO_TO_CONTIGUOUS = {coco_id: index for index, coco_id in enumerate(COCO_STUFF_171)}


def _save_label(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def _read_label(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise InputError(f"{path} not found: expected {what} (see `segheads prepare-data --help` for the layouts)")
    return path


def _build(output: Path, jobs: list[tuple], work: Callable) -> int:
    """Run ``work(*job, folder)`` for every job into a temporary folder renamed to ``output`` at the end."""
    if output.exists():
        logger.info(f"{output} exists; left as it is (delete it to prepare again)")
        return 0
    if not jobs:
        raise InputError(f"nothing to convert for {output}: the input folders hold no files")
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(lambda job: work(*job, partial), jobs))
    partial.rename(output)
    logger.info(f"wrote {len(jobs)} file(s) to {output}")
    return len(jobs)


def _ade20k(root: Path) -> int:
    base = _require(root / "ADEChallengeData2016" / "annotations", "ADE20K's ADEChallengeData2016/annotations")
    jobs = [(path, path.relative_to(base)) for path in sorted(base.rglob("*.png"))]

    def shift(source: Path, relative: Path, folder: Path) -> None:
        _save_label(_read_label(source).astype(np.int16) - 1 & 0xFF, folder / relative)  # 0 -> 255, k -> k-1

    return _build(base.parent / "annotations_detectron2", jobs, shift)


def _cityscapes(root: Path) -> int:
    base = _require(root / "cityscapes" / "gtFine", "Cityscapes' gtFine folder")
    table, written = _lookup(CITYSCAPES_ID_TO_TRAIN_ID), 0
    for source in sorted(base.rglob("*_gtFine_labelIds.png")):
        target = source.with_name(source.name.replace("_labelIds.png", "_labelTrainIds.png"))
        if not target.exists():
            partial = target.with_name(target.name + ".partial.png")
            _save_label(table[_read_label(source)], partial)
            partial.rename(target)
            written += 1
    logger.info(f"wrote {written} *_gtFine_labelTrainIds.png file(s) under {base}")
    return written


def _coco_stuff_164k(root: Path) -> int:
    base = _require(root / "coco" / "stuffthingmaps_trainval2017", "COCO-Stuff's stuffthingmaps_trainval2017")
    table = _lookup({coco_id - 1: index for coco_id, index in _COCO_TO_CONTIGUOUS.items()})
    jobs = [(path, path.relative_to(base)) for path in sorted(base.rglob("*.png"))]

    def convert(source: Path, relative: Path, folder: Path) -> None:
        _save_label(table[_read_label(source)], folder / relative)

    return _build(base.parent / "stuffthingmaps_detectron2", jobs, convert)


def _images_and_mat_labels(splits: list[tuple[Path, str]], images: Path, mats: Path, mat_key: str,
                           table: np.ndarray, image_out: Path, label_out: Path) -> int:
    """For each (image list, output subfolder): link ``images/<stem>.jpg`` under ``image_out``
    and write ``table[<stem>.mat[mat_key]]`` as ``label_out/<subfolder>/<stem>.png``."""
    from scipy.io import loadmat

    stems = [(stem, folder) for listing, folder in splits
             for stem in _require(listing, f"the image list {listing.name}").read_text().split()]
    image_jobs = [(_require(images / f"{stem}.jpg", "an image"), Path(folder) / f"{stem}.jpg") for stem, folder in stems]
    label_jobs = [(_require(mats / f"{stem}.mat", "a .mat annotation"), Path(folder) / f"{stem}.png")
                  for stem, folder in stems]

    def write_label(source: Path, relative: Path, folder: Path) -> None:
        _save_label(table[loadmat(source)[mat_key]], folder / relative)

    written = _build(image_out, image_jobs, lambda source, relative, folder: _link(source, folder / relative))
    return written + _build(label_out, label_jobs, write_label)


def _coco_stuff_10k(root: Path) -> int:
    base = _require(root / "coco" / "coco_stuff_10k", "COCO-Stuff-10k (cocostuff-10k-v1.1) unpacked in coco/coco_stuff_10k")
    table = _lookup({coco_id: index for coco_id, index in _COCO_TO_CONTIGUOUS.items()})
    splits = [(base / "imageLists" / f"{split}.txt", split) for split in ("train", "test")]
    return _images_and_mat_labels(splits, base / "images", base / "annotations", "S", table,
                                  base / "images_detectron2", base / "annotations_detectron2")


def _pascal_context_59(root: Path) -> int:
    voc = _require(root / "VOCdevkit" / "VOC2010", "PASCAL VOC 2010 (VOCdevkit/VOC2010)")
    context = _require(root / "pascal_context", "PASCAL-Context's trainval/*.mat and labels.txt in pascal_context")
    names = {}
    for line in _require(context / "labels.txt", "PASCAL-Context's labels.txt").read_text().splitlines():
        if ":" in line:
            number, name = line.split(":", 1)
            names[name.strip()] = int(number)
    missing = [name for name in PASCAL_CONTEXT_59 if name not in names]
    if missing:
        raise InputError(f"{context / 'labels.txt'}: no id for {', '.join(missing)}; expected the 459-class list")
    table = _lookup({names[name]: index for index, name in enumerate(PASCAL_CONTEXT_59)}, size=max(names.values()) + 1)
    splits = [(voc / "ImageSets" / "Main" / f"{split}.txt", folder) for split, folder in (("train", "training"),
                                                                                           ("val", "validation"))]
    out = root / "pascal_ctx_d2"
    return _images_and_mat_labels(splits, voc / "JPEGImages", context / "trainval", "LabelMap", table,
                                  out / "images", out / "annotations_ctx59")


PREPARERS: dict[str, Callable[[Path, Callable], int]] = {
    "ade20k": _ade20k, "cityscapes": _cityscapes, "coco_stuff_164k": _coco_stuff_164k,
    "coco_stuff_10k": _coco_stuff_10k, "pascal_context_59": _pascal_context_59,
}


def prepare(name: str, root: str | Path | None = None) -> int:
    """Convert dataset ``name`` under ``root`` (default ``$DETECTRON2_DATASETS``); files written."""
    if name not in PREPARERS:
        raise InputError(f"prepare-data: unknown dataset {name!r}; expected one of: {', '.join(PREPARERS)}")
    return PREPARERS[name](Path(root) if root is not None else datasets_root())
