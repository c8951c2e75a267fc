"""The papers' datasets: tiny fixtures in each download's layout, converted by
``segheads prepare-data`` and read back under detectron2's names from ``$DETECTRON2_DATASETS``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

from harness.cli import main

_H, _W = 6, 8


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((_H, _W, 3), 90, dtype=np.uint8)).save(path)


def _label(path, values):
    path.parent.mkdir(parents=True, exist_ok=True)
    label = np.zeros((_H, _W), dtype=np.uint8)
    label.flat[: len(values)] = values
    Image.fromarray(label).save(path)


def _downloads(root):
    """One image per split of each dataset, in the layout its download comes in."""
    ade = root / "ADEChallengeData2016"
    for folder in ("training", "validation"):
        _image(ade / "images" / folder / f"ADE_{folder}_1.jpg")
        _label(ade / "annotations" / folder / f"ADE_{folder}_1.png", [0, 1, 150])  # other, wall, flag
    city = root / "cityscapes"
    for split in ("train", "val"):
        _image(city / "leftImg8bit" / split / "aachen" / "aachen_000000_000019_leftImg8bit.png")
        gt = city / "gtFine" / split / "aachen" / "aachen_000000_000019_gtFine_"
        _label(Path(f"{gt}labelIds.png"), [0, 7, 33])
        _label(Path(f"{gt}instanceIds.png"), [0, 7, 33])  # the download's other files (detectron2's loader reads them)
        Path(f"{gt}polygons.json").write_text(json.dumps({"imgHeight": _H, "imgWidth": _W, "objects": []}))
    coco = root / "coco"
    for split in ("train2017", "val2017"):
        _image(coco / split / "000000000009.jpg")
        _label(coco / "stuffthingmaps_trainval2017" / split / "000000000009.png", [0, 91, 11, 255])
    ten_k = coco / "coco_stuff_10k"
    for split, stem in (("train", "COCO_train2014_000000000077"), ("test", "COCO_train2014_000000000078")):
        (ten_k / "imageLists").mkdir(parents=True, exist_ok=True)
        (ten_k / "imageLists" / f"{split}.txt").write_text(stem + "\n")
        _image(ten_k / "images" / f"{stem}.jpg")
        (ten_k / "annotations").mkdir(parents=True, exist_ok=True)
        label = np.zeros((_H, _W), dtype=np.uint8)
        label.flat[:3] = [0, 1, 182]  # unlabelled, person, wood
        savemat(ten_k / "annotations" / f"{stem}.mat", {"S": label})
    voc, context = root / "VOCdevkit" / "VOC2010", root / "pascal_context"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (context / "trainval").mkdir(parents=True)
    (context / "labels.txt").write_text("1: accordion\n2: aeroplane\n" + "".join(
        f"{i + 3}: {name}\n" for i, name in enumerate(["bag", "bed", "bedclothes", "bench", "bicycle", "bird",
                                                       "boat", "book", "bottle", "building", "bus", "cabinet", "car",
                                                       "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup",
                                                       "curtain", "dog", "door", "fence", "floor", "flower", "food",
                                                       "grass", "ground", "horse", "keyboard", "light", "motorbike",
                                                       "mountain", "mouse", "person", "plate", "platform",
                                                       "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk",
                                                       "sign", "sky", "snow", "sofa", "table", "track", "train",
                                                       "tree", "truck", "tvmonitor", "wall", "water", "window",
                                                       "wood"])))
    for split, stem in (("train", "2008_000002"), ("val", "2008_000003")):
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text(stem + "\n")
        _image(voc / "JPEGImages" / f"{stem}.jpg")
        label = np.zeros((_H, _W), dtype=np.uint16)
        label.flat[:3] = [1, 2, 60]  # accordion (not in the 59), aeroplane, wood
        savemat(context / "trainval" / f"{stem}.mat", {"LabelMap": label})


_READ_BACK = """
import json
from harness.data import DatasetCatalog, MetadataCatalog
from harness.data.sem_seg import read_label_array
from harness.data import dataset_splits
import numpy as np
out = {}
for dataset in ("ade20k_sem_seg", "cityscapes_fine_sem_seg", "coco_stuff_164k_sem_seg", "coco_stuff_10k_sem_seg",
                "pascal_context_59_sem_seg"):
    out[dataset] = {}
    for split, name in dataset_splits(dataset).items():
        records, meta = DatasetCatalog.get(name), MetadataCatalog.get(name)
        label = read_label_array(records[0]["sem_seg_file_name"], len(meta.stuff_classes), meta.ignore_label)
        out[dataset][split] = {"name": name, "records": len(records), "classes": len(meta.stuff_classes),
                               "ignore": meta.ignore_label, "first": label.flatten()[:4].tolist()}
print(json.dumps(out))
"""


def test_prepare_then_load_every_dataset_under_its_detectron2_name(tmp_path, capsys):
    _downloads(tmp_path)
    for name in ("ade20k", "cityscapes", "coco_stuff_164k", "coco_stuff_10k", "pascal_context_59"):
        assert main(["prepare-data", name, "--root", str(tmp_path)]) == 0
    assert not list(tmp_path.rglob("*.partial"))
    env = {**os.environ, "DETECTRON2_DATASETS": str(tmp_path)}
    read = subprocess.run([sys.executable, "-c", _READ_BACK], env=env, capture_output=True, text=True, check=True)
    got = json.loads(read.stdout)
    expected = {  # dataset: (classes, split names, first label values after conversion)
        "ade20k_sem_seg": (150, ["ade20k_sem_seg_train", "ade20k_sem_seg_val"], [255, 0, 149, 255]),
        "cityscapes_fine_sem_seg": (19, ["cityscapes_fine_sem_seg_train", "cityscapes_fine_sem_seg_val"],
                                    [255, 0, 18, 255]),
        "coco_stuff_164k_sem_seg": (171, ["coco_2017_train_stuff_sem_seg", "coco_2017_val_stuff_sem_seg"],
                                    [0, 80, 255, 255]),
        "coco_stuff_10k_sem_seg": (171, ["coco_2017_train_stuff_10k_sem_seg", "coco_2017_test_stuff_10k_sem_seg"],
                                   [255, 0, 170, 255]),
        "pascal_context_59_sem_seg": (59, ["pascal_context_59_sem_seg_train", "pascal_context_59_sem_seg_val"],
                                      [255, 0, 58, 255]),
    }
    for dataset, (classes, names, first) in expected.items():
        splits = got[dataset]
        assert [splits["train"]["name"], splits["val"]["name"]] == names
        for split in splits.values():
            assert split["records"] == 1 and split["classes"] == classes and split["ignore"] == 255
            assert split["first"] == first, dataset
    # converted outputs are left alone on a second run
    assert main(["prepare-data", "ade20k", "--root", str(tmp_path)]) == 0
    assert "exists; left as it is" in capsys.readouterr().err


def test_prepare_names_what_is_missing(tmp_path, capsys):
    assert main(["prepare-data", "ade20k", "--root", str(tmp_path)]) == 2
    assert f"{tmp_path / 'ADEChallengeData2016' / 'annotations'} not found" in capsys.readouterr().err
    assert main(["prepare-data", "imagenet", "--root", str(tmp_path)]) == 2
    assert "unknown dataset 'imagenet'; expected one of: ade20k" in capsys.readouterr().err
