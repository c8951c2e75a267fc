import math

import numpy as np
import pytest
import torch

from harness.evaluation import SemSegEvaluator


def test_hand_computed_confusion_with_ignore_pixels():
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    ev = SemSegEvaluator(3, ignore_label=255, class_names=["a", "b", "c"])
    ev.process(pred, gt)
    r = ev.evaluate()
    # Labelled pixels (pred, gt): (0,0) (1,0) (1,1) (1,1) (2,2); the ignored pixel predicted 0 is not counted.
    assert ev.confusion[:3, :3].tolist() == [[1, 0, 0], [1, 2, 0], [0, 0, 1]]
    assert r["IoU-a"] == pytest.approx(100 * 1 / 2)
    assert r["IoU-b"] == pytest.approx(100 * 2 / 3)
    assert r["IoU-c"] == pytest.approx(100.0)
    assert r["mIoU"] == pytest.approx(100 * (1 / 2 + 2 / 3 + 1) / 3)
    assert r["fwIoU"] == pytest.approx(100 * (0.4 * 1 / 2 + 0.4 * 2 / 3 + 0.2 * 1))
    assert r["ACC-a"] == pytest.approx(50.0)
    assert r["mACC"] == pytest.approx(100 * (0.5 + 1 + 1) / 3)
    assert r["pACC"] == pytest.approx(80.0)


def test_class_absent_from_ground_truth_is_excluded_but_its_false_positives_count():
    gt = torch.tensor([[0, 0], [1, 1]])
    pred = torch.tensor([[0, 2], [1, 1]])
    ev = SemSegEvaluator(3)
    ev.process(pred, gt)
    r = ev.evaluate()
    assert math.isnan(r["IoU-2"]) and math.isnan(r["ACC-2"])
    assert r["IoU-0"] == pytest.approx(50.0)  # one of two class-0 pixels went to class 2
    assert r["mIoU"] == pytest.approx(75.0)  # mean over classes 0 and 1 only
    assert r["pACC"] == pytest.approx(75.0)


def test_accumulates_over_images_and_resets():
    ev = SemSegEvaluator(2)
    ev.process(np.zeros((2, 2), int), np.zeros((2, 2), int))
    ev.process(np.ones((2, 2), int), np.zeros((2, 2), int))
    assert ev.evaluate()["pACC"] == pytest.approx(50.0)
    ev.reset()
    ev.process(np.ones((1, 3), int), np.ones((1, 3), int))
    assert ev.evaluate()["mIoU"] == pytest.approx(100.0)


@pytest.mark.parametrize(
    "pred, gt, message",
    [
        (np.array([[3]]), np.array([[0]]), "prediction values"),
        (np.array([[0]]), np.array([[7]]), "ground-truth values"),
        (np.zeros((2, 2), int), np.zeros((2, 3), int), "shape"),
    ],
)
def test_rejects_out_of_range_or_mismatched_maps(pred, gt, message):
    with pytest.raises(ValueError, match=message):
        SemSegEvaluator(3).process(pred, gt)


def test_per_image_counts_add_up_to_the_dataset_totals():
    import numpy as np

    from harness.evaluation import SemSegEvaluator

    rng = np.random.default_rng(0)
    evaluator = SemSegEvaluator(4, ignore_label=255)
    for _ in range(5):
        gt = rng.integers(0, 4, (8, 9))
        gt[0] = 255
        evaluator.process(rng.integers(0, 4, (8, 9)), gt)
    per_image = evaluator.per_image_counts()
    assert len(per_image) == 5
    matrix = evaluator.confusion[:-1, :-1]
    tp = np.diag(matrix)
    for c in range(4):
        rows = [r for image in per_image for r in image if r[0] == c]
        assert sum(r[1] for r in rows) == tp[c]
        assert sum(r[3] for r in rows) == matrix[:, c].sum()
    evaluator.reset()
    assert evaluator.per_image_counts() == []


def test_calibration_error_hand_computed_with_ignore_pixels_left_out():
    gt = np.array([[0, 1, 2, 0, 255]])
    pred = np.array([[0, 0, 2, 1, 0]])  # right, wrong, right, wrong; the last pixel is ignored
    confidence = np.array([[0.95, 0.95, 0.55, 0.15, 0.99]])
    evaluator = SemSegEvaluator(3, 255)
    evaluator.process(pred, gt, confidence)
    got = evaluator.evaluate()
    # Bins of width 1/15, (k/15, (k+1)/15]: 0.95 -> bin 14 (2 pixels, 1 right), 0.55 -> 8, 0.15 -> 2.
    expected = 2 / 4 * abs(0.5 - 0.95) + 1 / 4 * abs(1.0 - 0.55) + 1 / 4 * abs(0.0 - 0.15)
    assert got["ECE"] == pytest.approx(100 * expected)
    assert got["reliability/share-14"] == pytest.approx(50) and got["reliability/accuracy-14"] == pytest.approx(50)
    assert got["reliability/confidence-08"] == pytest.approx(55) and math.isnan(got["reliability/accuracy-00"])
    edge = SemSegEvaluator(3, 255)
    edge.process(np.array([[0, 0]]), np.array([[0, 0]]), np.array([[1 / 15, 1.0]]))  # bin edges: right-closed
    assert edge.evaluate()["reliability/share-00"] == pytest.approx(50)
    assert "ECE" not in SemSegEvaluator(3, 255).evaluate()  # nothing counted: no calibration keys


def test_boundary_iou_is_left_out_where_detectron2_cannot_count_it():
    many = SemSegEvaluator(300)
    many.process(np.zeros((4, 4), dtype=int), np.zeros((4, 4), dtype=int))
    assert not any(k.startswith(("BoundaryIoU-", "min(IoU, B-Iou)-", "mBoundaryIoU")) for k in many.evaluate())
    few = SemSegEvaluator(2)
    labels = np.zeros((40, 40), dtype=int)
    labels[10:30, 10:30] = 1
    few.process(labels, labels)
    got = few.evaluate()
    assert got["BoundaryIoU-1"] == 100 and got["mBoundaryIoU"] == 100 and got["min(IoU, B-Iou)-1"] == 100


def test_the_evaluator_keeps_the_named_images_predictions_and_they_survive_encoding():
    from harness.evaluation import decode_label_map, encode_label_map, sample_indices

    rng = np.random.default_rng(1)
    evaluator = SemSegEvaluator(300, keep={"b.jpg": 4})
    preds = [rng.integers(0, 300, (5, 7)) for _ in range(3)]
    for name, pred in zip(("a.jpg", "b.jpg", "c.jpg"), preds):
        evaluator.process(pred, rng.integers(0, 300, (5, 7)), file_name=name)
    assert list(evaluator.kept) == [4] and np.array_equal(evaluator.kept[4], preds[1])
    encoded = encode_label_map(preds[1])
    assert encoded["dtype"] == "uint16" and np.array_equal(decode_label_map(encoded), preds[1])  # 300 classes
    assert encode_label_map(preds[1] % 150)["dtype"] == "uint8"
    evaluator.reset()
    assert evaluator.kept == {}
    assert sample_indices(2000) == sample_indices(2000) and len(set(sample_indices(2000))) == 6
    assert sample_indices(4) == [0, 1, 2, 3]  # fewer images than the draw: all of them
