import pytest

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
