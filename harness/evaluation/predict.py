"""What a trained model predicts, as label maps and pictures: ``segheads predict`` and the report's
predictions section.

Predictions are the argmax of ``predict_logits`` under the cell's test protocol (``eval``), at each image's
own size, coloured with one fixed colour per class
(``class_colors``) so the same class has the same colour in every file and panel.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from harness.config import EvalConfig
from harness.data import DatasetCatalog, SemSegMapper, dataset_splits
from harness.data.sem_seg import IMAGE_EXTENSIONS, read_image_array
from harness.errors import InputError
from harness.evaluation.protocols import predict_logits
from harness.figures import colormap

IGNORE_COLOR = (0, 0, 0)


def class_colors(num_classes: int) -> np.ndarray:
    """[num_classes, 3] uint8: matplotlib's tab20 for the first 20 classes, then evenly
    spaced hues; black is kept for ignored pixels."""
    tab20 = (np.array(colormap("tab20").colors[:num_classes]) * 255).round()
    extra = [colorsys.hsv_to_rgb(i / max(1, num_classes - 20), 0.65, 0.9) for i in range(max(0, num_classes - 20))]
    return np.concatenate([tab20.reshape(-1, 3), np.array(extra).reshape(-1, 3) * 255]).astype(np.uint8)


def colorize(label_map: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """[H, W] class ids (anything outside ``colors`` is ignored: black) -> [H, W, 3] uint8."""
    known = (label_map >= 0) & (label_map < len(colors))
    out = np.zeros((*label_map.shape, 3), dtype=np.uint8)
    out[known] = colors[label_map[known]]
    out[~known] = IGNORE_COLOR
    return out


def predict_labels(model, image: torch.Tensor, protocol: EvalConfig) -> np.ndarray:
    """[H, W] class ids for one uint8 [3, H, W] image under the cell's test protocol."""
    return predict_logits(model, image, protocol).argmax(dim=0).cpu().numpy()


def image_iou(prediction: np.ndarray, truth: np.ndarray, num_classes: int, ignore_label: int) -> float:
    """mIoU (percent) of one image over the classes in its ground truth or its prediction."""
    valid = truth != ignore_label
    p, t = prediction[valid], truth[valid]
    intersection = np.bincount(t[p == t], minlength=num_classes)[:num_classes]
    union = np.bincount(p, minlength=num_classes)[:num_classes] + np.bincount(t, minlength=num_classes)[:num_classes] - intersection
    present = union > 0
    return float(100 * (intersection[present] / union[present]).mean()) if present.any() else float("nan")


def legend_image(classes: list[str], colors: np.ndarray):
    """A PIL image: one swatch and name per class."""
    row, width = 18, 14 + 8 * max(len(c) for c in classes) + 30
    legend = Image.new("RGB", (width, row * len(classes) + 6), "white")
    draw = ImageDraw.Draw(legend)
    for index, (name, color) in enumerate(zip(classes, colors)):
        top = 3 + index * row
        draw.rectangle([4, top, 18, top + 13], fill=tuple(int(v) for v in color), outline="black")
        draw.text((24, top + 1), name, fill="black")
    return legend


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted); ``InputError`` if there are none."""
    if not folder.is_dir():
        raise InputError(f"--images {folder}: not a folder")
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not found:
        raise InputError(f"--images {folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) under it")
    return found


def folder_sources(folder: Path, limit: int | None = None) -> list[tuple[str, torch.Tensor]]:
    """(name, uint8 [3, H, W] image) of the first ``limit`` images under ``folder``, each named by
    its relative path (``/`` as ``__``)."""
    return [(str(p.relative_to(folder).with_suffix("")).replace("/", "__"),
             torch.from_numpy(read_image_array(p)).permute(2, 0, 1).contiguous()) for p in list_images(folder)[:limit]]


def dataset_sources(dataset: str, num_classes: int, ignore_label: int,
                    limit: int | None = None) -> list[tuple[str, torch.Tensor]]:
    """(file stem, image) of the first ``limit`` images of a registered split, or of a dataset's val split."""
    split = dataset if dataset in DatasetCatalog else dataset_splits(dataset)["val"]
    mapper = SemSegMapper(num_classes, ignore_label)
    return [(Path(r["file_name"]).stem, mapper(r)["image"]) for r in DatasetCatalog.get(split)[:limit]]


def write_predictions(model, classes: list[str], sources: list[tuple[str, torch.Tensor]], out: Path,
                      protocol: EvalConfig) -> list[Path]:
    """For each (name, uint8 [3, H, W] image): ``out/<name>.png``, the prediction under ``protocol`` coloured by
    class, and ``out/<name>_overlay.png``, blended over the image; plus ``out/legend.png``."""
    out.mkdir(parents=True, exist_ok=True)
    colors = class_colors(len(classes))
    written = []
    for name, image in sources:
        coloured = colorize(predict_labels(model, image, protocol), colors)
        picture = image.permute(1, 2, 0).numpy()
        Image.fromarray(coloured).save(out / f"{name}.png")
        Image.fromarray((0.5 * picture + 0.5 * coloured).astype(np.uint8)).save(out / f"{name}_overlay.png")
        written += [out / f"{name}.png", out / f"{name}_overlay.png"]
    legend_image(classes, colors).save(out / "legend.png")
    return [*written, out / "legend.png"]
