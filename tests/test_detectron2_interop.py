"""segheads beside the real detectron2 (its source, ``../shared/third_party``; ``.ci/run`` puts it
on ``PYTHONPATH``): one catalog, detectron2's label spaces, the same evaluation numbers."""

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml
from gridtools import tiny_cell
from mlflow.tracking import MlflowClient
from PIL import Image

d2_data = pytest.importorskip("detectron2.data", reason="detectron2 is not importable here (see .ci/run)")
from detectron2.data.datasets import load_sem_seg as d2_load_sem_seg  # noqa: E402
from detectron2.evaluation import SemSegEvaluator as D2SemSegEvaluator  # noqa: E402

from harness.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from harness.evaluation import SemSegEvaluator  # noqa: E402

# The splits detectron2 registers itself that segheads has built in too.
SHARED_SPLITS = ("ade20k_sem_seg_train", "ade20k_sem_seg_val", "cityscapes_fine_sem_seg_train",
                 "cityscapes_fine_sem_seg_val")
CLASSES = ["sky, heaven", "road, route", "window "]  # detectron2-style names: commas, a trailing space


def _python(code: str, env: dict | None = None, cwd=None) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object, returned here."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, env=env or os.environ.copy(), cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


_LABEL_SPACES = """
    import json
    from harness.data import DatasetCatalog, MetadataCatalog
    from harness.data.catalog import DETECTRON2
    splits = {split: MetadataCatalog.get(split).stuff_classes for split in %r}
    print(json.dumps({"detectron2": DETECTRON2, "splits": splits, "digits": "digits_sem_seg_val" in DatasetCatalog}))
""" % (SHARED_SPLITS,)


@pytest.mark.parametrize("first", ["import detectron2.data", "import harness.data"])
def test_either_import_order_gives_one_catalog_with_detectron2_s_label_spaces(first):
    found = _python(f"{first}\n" + textwrap.dedent(_LABEL_SPACES) + textwrap.dedent(f"""
        from detectron2.data import DatasetCatalog as D2, MetadataCatalog as D2Meta
        print(json.dumps({{"same": all(D2Meta.get(s).stuff_classes == MetadataCatalog.get(s).stuff_classes
                                       for s in {SHARED_SPLITS!r}),
                           "digits_in_d2": "digits_sem_seg_train" in D2,
                           "d2_names_here": sorted(set(D2.list()) - set(DatasetCatalog.list()))}}))
    """))
    assert found == {"same": True, "digits_in_d2": True, "d2_names_here": []}


def test_without_detectron2_the_same_splits_have_the_same_label_spaces():
    blocked = "import sys; sys.modules['detectron2'] = None\n"  # as if detectron2 were not installed
    without = _python(blocked + textwrap.dedent(_LABEL_SPACES))
    assert without["detectron2"] is False and without["digits"] is True
    assert without["splits"] == {split: list(d2_data.MetadataCatalog.get(split).stuff_classes)
                                 for split in SHARED_SPLITS}
    assert without["splits"]["ade20k_sem_seg_val"][6] == "road, route"


def _folder_dataset(root, images=4, size=(40, 48), seed=0):
    """``images`` png images and label maps with ``CLASSES`` and ignore pixels under ``root``."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(images):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / "images" / split / f"{i}.png")
            label = rng.integers(0, len(CLASSES), size).astype(np.uint8)
            label[:3, :5] = 255
            Image.fromarray(label).save(root / "labels" / split / f"{i}.png")


_REGISTER = """
    import os
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import load_sem_seg

    root = os.environ["D2_INTEROP_ROOT"]
    for split in ("train", "val"):
        name = f"d2interop_{split}"
        DatasetCatalog.register(name, lambda s=split: load_sem_seg(f"{root}/labels/{s}", f"{root}/images/{s}",
                                                                   gt_ext="png", image_ext="png"))
        MetadataCatalog.get(name).set(stuff_classes=%r, ignore_label=255, evaluator_type="sem_seg")
""" % (CLASSES,)


def test_a_dataset_registered_only_in_detectron2_runs_validates_and_grids_by_name(tmp_path):
    _folder_dataset(tmp_path / "data")
    (tmp_path / "my_d2_datasets.py").write_text(textwrap.dedent(_REGISTER))
    env = {**os.environ, "D2_INTEROP_ROOT": str(tmp_path / "data"), "SEGHEADS_DATASETS": "my_d2_datasets",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    segheads = [sys.executable, "-m", "harness"]
    tiny = tiny_cell(iters=3) + ["data.batch_size=2", f"output_dir={tmp_path / 'outputs'}"]

    def run(*args):
        return subprocess.run([*segheads, *args], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)

    checked = run("validate-data", "d2interop")
    assert checked.returncode == 0, checked.stderr
    assert "d2interop_train: 4 pairs, 0 problem(s)" in checked.stderr

    trained = run("run", "--no-tracking", "--json", str(tmp_path / "cell.json"), "--set", "data.dataset=d2interop", *tiny)
    assert trained.returncode == 0, trained.stderr
    cell = json.loads((tmp_path / "cell.json").read_text())
    assert cell["tags"]["dataset"] == "d2interop" and cell["per_class"]["class"] == CLASSES
    assert math.isfinite(cell["metrics"]["mIoU"]) and "IoU-road, route" in cell["metrics"]

    spec = tmp_path / "d2grid.yaml"
    sections = {"model": {"embed_dim": 16}, "data": {"num_workers": 0, "image_size": 32, "batch_size": 2},
                "train": {"iters": 3}, "measure": {"enabled": False}}
    spec.write_text(yaml.safe_dump({"name": "d2grid", "backbones": ["test_convnext"], "classifiers": ["softmax"],
                                    "datasets": ["d2interop"], **sections}))
    gridded = run("grid", str(spec), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                  "--results", str(tmp_path / "results.jsonl"))
    assert gridded.returncode == 0, gridded.stderr
    (line,) = [json.loads(text) for text in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert line["status"] == "FINISHED" and line["tags"]["dataset"] == "d2interop"
    (logged,) = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs(
        [MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment_by_name("d2grid").experiment_id],
        "tags.config_hash != ''")
    # MLflow refuses commas in metric names: the class is logged as "road_ route", its IoU unchanged
    assert logged.data.metrics["IoU-road_ route"] == pytest.approx(line["metrics"]["IoU-road, route"])

    unknown = run("validate-data", "d2nope")
    assert unknown.returncode == 2 and "known datasets:" in unknown.stderr and "d2interop" in unknown.stderr


def test_semseg_evaluator_equals_detectron2_s_on_the_same_predictions(tmp_path):
    _folder_dataset(tmp_path, images=6, size=(31, 45), seed=3)
    name = "d2interop_eval_val"
    d2_data.DatasetCatalog.register(name, lambda: d2_load_sem_seg(str(tmp_path / "labels" / "val"),
                                                                  str(tmp_path / "images" / "val"), "png", "png"))
    d2_data.MetadataCatalog.get(name).set(stuff_classes=CLASSES, ignore_label=255, evaluator_type="sem_seg")
    try:
        records = DatasetCatalog.get(name)  # detectron2's registration, read through segheads' catalog
        theirs = D2SemSegEvaluator(name, distributed=False)
        ours = SemSegEvaluator(len(CLASSES), MetadataCatalog.get(name).ignore_label, MetadataCatalog.get(name).stuff_classes)
        theirs.reset()
        generator = torch.Generator().manual_seed(0)
        for index, record in enumerate(records):
            gt = np.asarray(Image.open(record["sem_seg_file_name"]), dtype=np.int64)
            logits = torch.randn(len(CLASSES), *gt.shape, generator=generator)
            if index == 0:  # one class never predicted in one image, and one image that is all right
                logits[1] -= 100
            if index == 1:
                logits = torch.nn.functional.one_hot(torch.from_numpy(np.where(gt == 255, 0, gt)), len(CLASSES))
                logits = logits.permute(2, 0, 1).float()
            theirs.process([record], [{"sem_seg": logits}])
            ours.process(logits.argmax(0), gt)
        expected = theirs.evaluate()["sem_seg"]
        got = ours.evaluate()
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    # With OpenCV importable (a segheads dependency), detectron2 adds its boundary IoU per class.
    assert set(got) == set(expected) | {"mBoundaryIoU"} and len(expected) == 4 + 4 * len(CLASSES)
    for key, value in expected.items():
        assert (math.isnan(value) and math.isnan(got[key])) or got[key] == pytest.approx(value, abs=1e-6), key
    boundary = [v for k, v in expected.items() if k.startswith("BoundaryIoU-") and not math.isnan(v)]
    assert got["mBoundaryIoU"] == pytest.approx(sum(boundary) / len(boundary), abs=1e-6)
