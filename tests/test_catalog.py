import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.data import DatasetCatalog, MetadataCatalog
from harness.errors import InputError


def test_register_get_and_double_registration_fails():
    records = [{"file_name": "a.jpg", "sem_seg_file_name": "a.png", "height": 1, "width": 1}]
    DatasetCatalog.register("catalog_test_once", lambda: records)
    try:
        assert DatasetCatalog.get("catalog_test_once") == records
        assert "catalog_test_once" in DatasetCatalog.list()
        with pytest.raises(ValueError, match="already registered"):
            DatasetCatalog.register("catalog_test_once", lambda: [])
    finally:
        DatasetCatalog.remove("catalog_test_once")


def test_register_requires_a_callable():
    with pytest.raises(TypeError, match="zero-argument function"):
        DatasetCatalog.register("catalog_test_not_callable", [])


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(InputError, match="unknown dataset 'nope'.*digits_sem_seg_train"):
        DatasetCatalog.get("nope")


def test_metadata_conflict_fails_but_same_value_is_allowed():
    meta = MetadataCatalog.get("catalog_test_meta")
    meta.set(stuff_classes=["a", "b"], ignore_label=255)
    meta.ignore_label = 255
    with pytest.raises(ValueError, match="ignore_label.*already 255"):
        meta.ignore_label = 0
    assert MetadataCatalog.get("catalog_test_meta").stuff_classes == ["a", "b"]
    with pytest.raises(AttributeError, match="has no metadata 'thing_classes'"):
        _ = meta.thing_classes


def test_builtin_digits_metadata():
    meta = MetadataCatalog.get("digits_sem_seg_train")
    assert meta.stuff_classes == [str(d) for d in range(10)] + ["background"]
    assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"


def test_readme_s_dataset_module_registers_through_segheads_datasets(tmp_path):
    """README's ``register_sem_seg`` snippet, as a user's module named in ``SEGHEADS_DATASETS``:
    it imports from ``harness.data`` while segheads starts, and the command sees its splits."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippet = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "register_sem_seg(" in block)
    (tmp_path / "my_datasets.py").write_text(snippet)
    for split in ("train",):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "labels" / split).mkdir(parents=True)
        Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(tmp_path / "images" / split / "a.jpg")
        Image.fromarray(np.ones((20, 24), np.uint8)).save(tmp_path / "labels" / split / "a.png")
    env = {**os.environ, "SEGHEADS_DATASETS": "my_datasets",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "harness", "validate-data", "mydata_train"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "1 pairs, 0 problem(s)" in done.stderr and "circular import" not in done.stderr
