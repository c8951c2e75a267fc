"""Whole-dataset checks (``segheads validate-data``): every file of a dataset is opened and
decoded, and every problem is reported, not only the first.

Per pair: the image decodes; the label map decodes, is single-channel and holds only class
ids in [0, num_classes) or the ignore label; both have the same size. Folder pairs also
report every unpaired file. Files are checked on a thread pool (decoding releases the GIL).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.data.catalog import DatasetCatalog, MetadataCatalog
from harness.data.sem_seg import pair_files, read_image_array, read_label_array, size_mismatch
from harness.data.splits import dataset_splits
from harness.errors import InputError
from harness.logs import logger

_PROGRESS_EVERY = 1000


def _check_pair(image_path: str, label_path: str, num_classes: int, ignore_label: int) -> list[str]:
    problems, image, label = [], None, None
    try:
        image = read_image_array(image_path)
    except InputError as exc:
        problems.append(str(exc))
    try:
        label = read_label_array(label_path, num_classes, ignore_label)
    except InputError as exc:
        problems.append(str(exc))
    mismatch = size_mismatch(image_path, image, label_path, label) if image is not None and label is not None else None
    return problems + ([mismatch] if mismatch else [])


def validate_records(records: list[dict], num_classes: int, ignore_label: int) -> list[str]:
    """Every problem of detectron2-style dataset dicts (``file_name``, ``sem_seg_file_name``),
    one message per problem naming the file (each also logged as a warning); logs a line per 1,000 pairs."""
    problems: list[str] = []
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        checks = pool.map(lambda r: _check_pair(r["file_name"], r["sem_seg_file_name"], num_classes, ignore_label),
                          records)
        for done, found in enumerate(checks, 1):
            for problem in found:
                logger.warning(problem)
            problems += found
            if done % _PROGRESS_EVERY == 0:
                logger.info(f"checked {done}/{len(records)} pairs, {len(problems)} problem(s) so far")
    return problems


def validate_folders(image_root: str | Path, gt_root: str | Path, num_classes: int, ignore_label: int = 255,
                     image_suffix: str | None = None, gt_suffix: str = ".png") -> list[str]:
    """Every problem of a folder pair: unpaired files, then each pair's (``validate_records``)."""
    pairs, unpaired = pair_files(gt_root, image_root, gt_suffix, image_suffix)
    for problem in unpaired:
        logger.warning(problem)
    records = [{"file_name": str(image), "sem_seg_file_name": str(label)} for image, label in pairs]
    problems = unpaired + validate_records(records, num_classes, ignore_label)
    logger.info(f"{image_root} + {gt_root}: {len(pairs)} pairs, {len(problems)} problem(s)")
    return problems


def validate_registered(name: str) -> list[str]:
    """Every problem of a registered split, or of both splits of a dataset (``<name>_train``, ``<name>_val``)."""


    splits = [name] if name in DatasetCatalog else list(dataset_splits(name).values())
    problems = []
    for split in splits:
        meta = MetadataCatalog.get(split)
        num_classes, ignore = len(meta.stuff_classes), meta.get("ignore_label", 255)
        if meta.get("image_root") and meta.get("sem_seg_root"):
            problems += validate_folders(meta.image_root, meta.sem_seg_root, num_classes, ignore,
                                         meta.get("image_suffix"), meta.get("gt_suffix", ".png"))
            continue
        records = DatasetCatalog.get(split)
        found = validate_records(records, num_classes, ignore)
        logger.info(f"{split}: {len(records)} pairs, {len(found)} problem(s)")
        problems += found
    return problems
