"""Reading semantic-segmentation files: detectron2's ``load_sem_seg`` and checked readers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from harness.data.digits import cache_root
from harness.errors import InputError
from harness.files import staged_file

_LAYOUT = "IMAGE_ROOT/<stem>{image_suffix} paired with GT_ROOT/<stem>{gt_suffix} (same relative path and stem)"


def _files(root: Path, suffix: str) -> dict[str, Path]:
    """Files under ``root`` ending in ``suffix``, by relative path without it."""
    return {str(p.relative_to(root))[: -len(suffix)]: p for p in sorted(root.rglob(f"*{suffix}"))}


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _image_extensions(root: Path, exclude: str = "") -> dict[str, int]:
    """How many files of each image extension are under ``root`` (``exclude``: the label maps' suffix)."""
    counts: dict[str, int] = {}
    for path in root.rglob("*"):
        suffix = path.suffix.lower()
        if suffix in IMAGE_EXTENSIONS and path.is_file() and not (exclude and path.name.endswith(exclude)):
            counts[suffix] = counts.get(suffix, 0) + 1
    return counts


def image_suffix_for(image_root: str | Path, image_suffix: str | None, flag: str = "--image-ext") -> str:
    """The images' suffix: ``image_suffix`` when given; otherwise ``.jpg`` (detectron2's default)
    when there are jpg images, else the one image extension under ``image_root``. Several
    other extensions and no jpg: ``InputError`` naming them and ``flag``."""
    if image_suffix is not None:
        return image_suffix
    found = _image_extensions(Path(image_root)) if Path(image_root).is_dir() else {}
    if ".jpg" in found or not found:
        return ".jpg"
    if len(found) == 1:
        return next(iter(found))
    listed = ", ".join(f"{n} *{ext}" for ext, n in sorted(found.items()))
    raise InputError(f"no *.jpg images under {image_root} but {listed}; pass {flag} with the images' extension")


def pair_files(gt_root: str | Path, image_root: str | Path, gt_suffix: str = ".png",
               image_suffix: str | None = None) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(image, label map) pairs by relative path without the suffix (an extension such as
    ``.jpg``, or a whole ending such as Cityscapes' ``_leftImg8bit.png``; None: detected by
    ``image_suffix_for``), and one message per unpaired file. A missing or image-less folder
    raises ``InputError`` naming the layout and, if other image files are there, their
    extension and the flag to pass."""
    gt_root, image_root = Path(gt_root), Path(image_root)
    for kind, root in (("image", image_root), ("ground-truth", gt_root)):
        if not root.is_dir():
            layout = _LAYOUT.format(image_suffix=image_suffix or ".jpg", gt_suffix=gt_suffix)
            raise InputError(f"{kind} folder {root} does not exist; expected layout: {layout}")
    image_suffix = image_suffix_for(image_root, image_suffix)
    layout = _LAYOUT.format(image_suffix=image_suffix, gt_suffix=gt_suffix)
    images, labels = _files(image_root, image_suffix), _files(gt_root, gt_suffix)
    if not images:
        others = _image_extensions(image_root, exclude=gt_suffix if image_root == gt_root else "")
        hint = "".join(f"; found {n} *{ext} image(s): pass --image-ext {ext.lstrip('.')} "
                       f"(image_ext={ext.lstrip('.')!r} in register_sem_seg)" for ext, n in list(others.items())[:1])
        raise InputError(f"no *{image_suffix} images under {image_root}{hint}; expected layout: {layout}")
    unpaired = [f"{images[key]}: no label map {gt_root / key}{gt_suffix}" for key in sorted(set(images) - set(labels))]
    unpaired += [f"{labels[key]}: no image {image_root / key}{image_suffix}" for key in sorted(set(labels) - set(images))]
    return [(images[key], labels[key]) for key in sorted(set(images) & set(labels))], unpaired


def load_sem_seg(gt_root: str | Path, image_root: str | Path, gt_ext: str = "png",
                 image_ext: str | None = None) -> list[dict]:
    """Dataset dicts for a folder pair, like ``detectron2.data.datasets.load_sem_seg``
    (``image_ext`` None: jpg, or the one image extension the folder holds).

    Images and label maps are paired by relative path without extension. Each dict
    has ``file_name``, ``sem_seg_file_name``, ``height`` and ``width`` (read from the
    image header once, then from the folder's scan, ``scanned_sizes``). A missing folder, an empty folder or an unpaired file raises
    ``InputError`` naming the path and the expected layout.
    """
    return load_pairs(gt_root, image_root, f".{gt_ext}", f".{image_ext}" if image_ext else None)


def load_pairs(gt_root: str | Path, image_root: str | Path, gt_suffix: str, image_suffix: str | None) -> list[dict]:
    """``load_sem_seg`` for files paired by a whole ending (``pair_files``)."""
    image_suffix = image_suffix_for(image_root, image_suffix)
    pairs, unpaired = pair_files(gt_root, image_root, gt_suffix, image_suffix)
    if unpaired:
        layout = _LAYOUT.format(image_suffix=image_suffix, gt_suffix=gt_suffix)
        raise InputError(f"{unpaired[0]} ({len(unpaired)} unpaired file(s); `segheads validate-data` lists them); "
                         f"expected layout: {layout}")
    sizes = scanned_sizes([image for image, _ in pairs], Path(image_root))
    return [{"file_name": str(image), "sem_seg_file_name": str(label), "height": height, "width": width}
            for (image, label), (width, height) in zip(pairs, sizes)]


def _listing_key(images: list[Path]) -> str:
    """A digest of the images' paths, sizes and modification times: what a scan depends on."""
    digest = hashlib.sha256()
    for path in images:
        info = path.stat()
        digest.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def scan_file(image_root: Path) -> Path:
    """Where a folder's scan is kept: in the segheads cache (``$SEGHEADS_CACHE/scans``), named by
    the folder's absolute path; never in the dataset's own tree, often shared and read-only."""
    digest = hashlib.sha256(str(image_root.resolve()).encode()).hexdigest()[:16]
    return cache_root() / "scans" / f"{image_root.name}-{digest}.json"


def scanned_sizes(images: list[Path], image_root: Path) -> list[tuple[int, int]]:
    """(width, height) of each of ``images`` (under ``image_root``), from the file headers once:
    the scan is kept in the cache (``scan_file``), keyed by the folder's listing (``_listing_key``),
    and read back while the listing is unchanged, so the cells of a grid do not each open every
    image header. A cache that cannot be written only costs the next reader the scan."""
    key, place = _listing_key(images), scan_file(image_root)
    try:
        kept = json.loads(place.read_text())
        if kept["key"] == key and len(kept["sizes"]) == len(images):
            return [tuple(size) for size in kept["sizes"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    sizes = [image_size(path) for path in images]
    try:
        place.parent.mkdir(parents=True, exist_ok=True)
        with staged_file(place, "w") as out:  # written whole, then renamed into place
            json.dump({"key": key, "sizes": sizes}, out)
    except OSError:
        pass
    return sizes


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header; ``InputError`` naming the file if unreadable."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None


def read_image_array(path: str | Path) -> np.ndarray:
    """An RGB uint8 [H, W, 3] array, decoded by OpenCV as MMSegmentation's ``LoadImageFromFile``
    does (the same pixels as Pillow's, faster), on the file's stored pixel grid (EXIF orientation
    ignored, as the label map's); ``InputError`` naming the file if it is missing or unreadable."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        reason = "no such file" if not Path(path).is_file() else "not an image OpenCV can decode"
        raise InputError(f"cannot read image {path}: {reason}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label_array(path: str | Path, num_classes: int, ignore_label: int) -> np.ndarray:
    """A single-channel label map [H, W] (Pillow's decoder: palette PNGs give their indices, as
    MMSegmentation's ``LoadAnnotations`` reads them) whose values are in [0, num_classes) or
    ``ignore_label``; ``InputError`` naming the file and the offending values otherwise."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise InputError(f"label map {path} has mode {img.mode}; expected a single-channel (L/P/I) PNG")
            label = np.array(img)
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"cannot read label map {path}: {exc}") from None
    if label.max(initial=0) < num_classes and label.min(initial=0) >= 0:
        return label
    values = np.unique(label[(label >= num_classes) | (label < 0)])
    bad = values[values != ignore_label]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:5]) + (", ..." if bad.size > 5 else "")
        raise InputError(f"label map {path} has value{'s' if bad.size > 1 else ''} {shown}; "
                         f"expected class ids in [0, {num_classes}) or the ignore label {ignore_label}")
    return label


def size_mismatch(image_path, image: np.ndarray, label_path, label: np.ndarray) -> str | None:
    """The message for an image and its label map of different sizes, or None when they agree."""
    if image.shape[:2] == label.shape[:2]:
        return None
    return (f"image {image_path} is {image.shape[1]}x{image.shape[0]} but label map {label_path} is "
            f"{label.shape[1]}x{label.shape[0]}; expected equal sizes")
