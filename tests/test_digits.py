import numpy as np
from PIL import Image

from harness.data import DatasetCatalog
from harness.data.digits import BACKGROUND, digit_pools, ensure_digits


def test_scenes_are_deterministic_on_disk(tmp_path, monkeypatch):
    roots = []
    for name in ("a", "b"):
        monkeypatch.setenv("SEGHEADS_CACHE", str(tmp_path / name))
        roots.append(ensure_digits(seed=3, image_size=48, num_train=6, num_val=3))
    files = sorted(p.relative_to(roots[0]) for p in roots[0].rglob("*.png"))
    assert len(files) == 18
    for rel in files:
        assert np.array_equal(np.asarray(Image.open(roots[0] / rel)), np.asarray(Image.open(roots[1] / rel)))
    assert not [p for p in roots[0].parent.iterdir() if p.is_dir() and p.name.startswith(".")]  # no staging folder left


def test_other_seed_gives_other_scenes(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGHEADS_CACHE", str(tmp_path))
    a = ensure_digits(seed=0, image_size=48, num_train=2, num_val=1)
    b = ensure_digits(seed=1, image_size=48, num_train=2, num_val=1)
    image = "images/train/00000.png"
    assert not np.array_equal(np.asarray(Image.open(a / image)), np.asarray(Image.open(b / image)))


def test_train_and_val_use_disjoint_digit_samples():
    pools = digit_pools(0)
    train = {s.tobytes() for s in pools["train"][0]}
    val = [s.tobytes() for s in pools["val"][0]]
    assert len(val) > 300 and sum(v in train for v in val) < len(val) * 0.05  # the UCI set has a few exact duplicates


def test_registered_digits_go_through_the_folder_loader():
    records = DatasetCatalog.get("digits_sem_seg_val")
    assert len(records) == 300
    labels = np.stack([np.asarray(Image.open(r["sem_seg_file_name"])) for r in records[:50]])
    assert set(np.unique(labels)) <= set(range(11))
    assert (labels != BACKGROUND).any(axis=(1, 2)).all()  # every scene holds at least one digit
    assert len(set(np.unique(labels)) - {BACKGROUND}) == 10  # every digit class occurs
