"""Reading semantic-segmentation files: detectron2's ``load_sem_seg`` and checked readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from harness.errors import InputError

_LAYOUT = "IMAGE_ROOT/<stem>{image_suffix} paired with GT_ROOT/<stem>{gt_suffix} (same relative path and stem)"


def _files(root: Path, suffix: str) -> dict[str, Path]:
    """Files under ``root`` ending in ``suffix``, by relative path without it."""
    return {str(p.relative_to(root))[: -len(suffix)]: p for p in sorted(root.rglob(f"*{suffix}"))}


def pair_files(gt_root: str | Path, image_root: str | Path, gt_suffix: str = ".png",
               image_suffix: str = ".jpg") -> tuple[list[tuple[Path, Path]], list[str]]:
    """(image, label map) pairs by relative path without the suffix (an extension such as
    ``.jpg``, or a whole ending such as Cityscapes' ``_leftImg8bit.png``), and one message per
    unpaired file. A missing or image-less folder raises ``InputError`` naming the layout."""
    gt_root, image_root = Path(gt_root), Path(image_root)
    layout = _LAYOUT.format(image_suffix=image_suffix, gt_suffix=gt_suffix)
    for kind, root in (("image", image_root), ("ground-truth", gt_root)):
        if not root.is_dir():
            raise InputError(f"{kind} folder {root} does not exist; expected layout: {layout}")
    images, labels = _files(image_root, image_suffix), _files(gt_root, gt_suffix)
    if not images:
        raise InputError(f"no *{image_suffix} images under {image_root}; expected layout: {layout}")
    unpaired = [f"{images[key]}: no label map {gt_root / key}{gt_suffix}" for key in sorted(set(images) - set(labels))]
    unpaired += [f"{labels[key]}: no image {image_root / key}{image_suffix}" for key in sorted(set(labels) - set(images))]
    return [(images[key], labels[key]) for key in sorted(set(images) & set(labels))], unpaired


def load_sem_seg(gt_root: str | Path, image_root: str | Path, gt_ext: str = "png", image_ext: str = "jpg") -> list[dict]:
    """Dataset dicts for a folder pair, like ``detectron2.data.datasets.load_sem_seg``.

    Images and label maps are paired by relative path without extension. Each dict
    has ``file_name``, ``sem_seg_file_name``, ``height`` and ``width`` (read from the
    image header). A missing folder, an empty folder or an unpaired file raises
    ``InputError`` naming the path and the expected layout.
    """
    return load_pairs(gt_root, image_root, f".{gt_ext}", f".{image_ext}")


def load_pairs(gt_root: str | Path, image_root: str | Path, gt_suffix: str, image_suffix: str) -> list[dict]:
    """``load_sem_seg`` for files paired by a whole ending (``pair_files``)."""
    pairs, unpaired = pair_files(gt_root, image_root, gt_suffix, image_suffix)
    if unpaired:
        layout = _LAYOUT.format(image_suffix=image_suffix, gt_suffix=gt_suffix)
        raise InputError(f"{unpaired[0]} ({len(unpaired)} unpaired file(s); `segheads validate-data` lists them); "
                         f"expected layout: {layout}")
    dicts = []
    for image, label in pairs:
        width, height = image_size(image)
        dicts.append({"file_name": str(image), "sem_seg_file_name": str(label), "height": height, "width": width})
    return dicts


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header; ``InputError`` naming the file if unreadable."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None


def read_image(path: str | Path) -> Image.Image:
    """An RGB image; ``InputError`` naming the file if it is missing or unreadable."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None


def read_sem_seg(path: str | Path, num_classes: int, ignore_label: int) -> Image.Image:
    """A single-channel label map whose values are in [0, num_classes) or ``ignore_label``.

    Raises ``InputError`` naming the file and the offending value otherwise.
    """
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise InputError(f"label map {path} has mode {img.mode}; expected a single-channel (L/P/I) PNG")
            label = img.copy()
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"cannot read label map {path}: {exc}") from None
    values = np.unique(np.asarray(label))
    bad = values[(values >= num_classes) | (values < 0)]
    bad = bad[bad != ignore_label]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:5]) + (", ..." if bad.size > 5 else "")
        raise InputError(f"label map {path} has value{'s' if bad.size > 1 else ''} {shown}; "
                         f"expected class ids in [0, {num_classes}) or the ignore label {ignore_label}")
    return label
