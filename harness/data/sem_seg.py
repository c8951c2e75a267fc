"""Reading semantic-segmentation files: detectron2's ``load_sem_seg`` and checked readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from harness.errors import InputError

_LAYOUT = "IMAGE_ROOT/<stem>.{image_ext} paired with GT_ROOT/<stem>.{gt_ext} (same relative path and stem)"


def _files(root: Path, ext: str) -> dict[str, Path]:
    return {str(p.relative_to(root).with_suffix("")): p for p in sorted(root.rglob(f"*.{ext}"))}


def pair_files(gt_root: str | Path, image_root: str | Path, gt_ext: str = "png",
               image_ext: str = "jpg") -> tuple[list[tuple[Path, Path]], list[str]]:
    """(image, label map) pairs by relative path without extension, and one message per
    unpaired file. A missing or image-less folder raises ``InputError`` naming the layout."""
    gt_root, image_root = Path(gt_root), Path(image_root)
    layout = _LAYOUT.format(image_ext=image_ext, gt_ext=gt_ext)
    for kind, root in (("image", image_root), ("ground-truth", gt_root)):
        if not root.is_dir():
            raise InputError(f"{kind} folder {root} does not exist; expected layout: {layout}")
    images, labels = _files(image_root, image_ext), _files(gt_root, gt_ext)
    if not images:
        raise InputError(f"no *.{image_ext} images under {image_root}; expected layout: {layout}")
    unpaired = [f"{images[key]}: no label map {gt_root / key}.{gt_ext}" for key in sorted(set(images) - set(labels))]
    unpaired += [f"{labels[key]}: no image {image_root / key}.{image_ext}" for key in sorted(set(labels) - set(images))]
    return [(images[key], labels[key]) for key in sorted(set(images) & set(labels))], unpaired


def load_sem_seg(gt_root: str | Path, image_root: str | Path, gt_ext: str = "png", image_ext: str = "jpg") -> list[dict]:
    """Dataset dicts for a folder pair, like ``detectron2.data.datasets.load_sem_seg``.

    Images and label maps are paired by relative path without extension. Each dict
    has ``file_name``, ``sem_seg_file_name``, ``height`` and ``width`` (read from the
    image header). A missing folder, an empty folder or an unpaired file raises
    ``InputError`` naming the path and the expected layout.
    """
    pairs, unpaired = pair_files(gt_root, image_root, gt_ext, image_ext)
    if unpaired:
        layout = _LAYOUT.format(image_ext=image_ext, gt_ext=gt_ext)
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
