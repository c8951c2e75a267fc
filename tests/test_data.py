import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from harness.data import AugmentConfig, SemSegMapper, build_train_loader, load_sem_seg
from harness.data.digits import cache_root
from harness.data.loader import DataParallelLayout, StepSampler, split_batch
from harness.data.sem_seg import scan_file
from harness.errors import InputError


def test_load_sem_seg_pairs_files_with_sizes(folder_dataset):
    image_root, gt_root = folder_dataset
    records = load_sem_seg(gt_root, image_root)
    assert len(records) == 4
    assert records[0]["file_name"].endswith("img0.jpg") and records[0]["sem_seg_file_name"].endswith("img0.png")
    assert (records[0]["height"], records[0]["width"]) == (40, 48)


def test_missing_folder_names_path_and_layout(tmp_path):
    with pytest.raises(InputError, match=rf"image folder {tmp_path / 'nowhere'} does not exist; expected layout: IMAGE_ROOT"):
        load_sem_seg(tmp_path, tmp_path / "nowhere")


def test_unpaired_file_is_named(folder_dataset):
    image_root, gt_root = folder_dataset
    (gt_root / "img3.png").unlink()
    with pytest.raises(InputError, match=r"img3\.jpg: no label map .*img3\.png \(1 unpaired"):
        load_sem_seg(gt_root, image_root)


def test_unreadable_image_is_named(folder_dataset):
    image_root, gt_root = folder_dataset
    (image_root / "img1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match=r"cannot read image .*img1\.jpg"):
        load_sem_seg(gt_root, image_root)


def test_label_out_of_range_names_file_and_value(folder_dataset):
    image_root, gt_root = folder_dataset
    label = np.zeros((40, 48), np.uint8)
    label[5, 5] = 9
    Image.fromarray(label).save(gt_root / "img2.png")
    mapper = SemSegMapper(num_classes=3, ignore_label=255)
    record = load_sem_seg(gt_root, image_root)[2]
    with pytest.raises(InputError, match=r"img2\.png has value 9; expected class ids in \[0, 3\) or the ignore label 255"):
        mapper(record)


def test_size_mismatch_names_both_files(folder_dataset):
    image_root, gt_root = folder_dataset
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(gt_root / "img0.png")
    record = load_sem_seg(gt_root, image_root)[0]
    with pytest.raises(InputError, match=r"img0\.jpg is 48x40 but label map .*img0\.png is 20x20"):
        SemSegMapper(3, 255)(record)


def test_train_mapper_crops_pads_with_ignore_and_is_seeded(folder_dataset):
    image_root, gt_root = folder_dataset
    record = load_sem_seg(gt_root, image_root)[0]
    mapper = SemSegMapper(3, 255, AugmentConfig(crop_size=(64, 64), scale_range=(0.5, 0.7), hflip_prob=0.5,
                                                color_jitter=0.2))
    first, second, other = mapper(record, seed=3), mapper(record, seed=3), mapper(record, seed=4)
    assert first["image"].shape == (3, 64, 64) and first["image"].dtype == torch.uint8
    assert first["sem_seg"].shape == (64, 64)
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["sem_seg"], second["sem_seg"])
    assert not torch.equal(first["image"], other["image"])
    # Rescaled to 32-45 px on the short side (MMCV's rounding: int(x * f + 0.5)), the rest of the crop
    # is padding: labels ignored, pixels left for the model to zero after normalisation.
    rows, cols = first["image_size"].tolist()
    assert 32 <= rows <= 45 and cols == int(48 * rows / 40 + 0.5) or cols == int(48 * (rows + 0.5) / 40 + 0.5)
    assert (first["sem_seg"][rows:] == 255).all() and (first["sem_seg"][:, cols:] == 255).all()
    assert (first["sem_seg"][:rows, :cols] != 255).any()


def test_the_model_zeroes_the_padding_after_normalising():
    from harness.modeling.segmentor import IMAGENET_MEAN, Segmentor

    model = Segmentor(torch.nn.Identity(), torch.nn.Identity(), None)
    images = torch.full((2, 3, 6, 8), 200, dtype=torch.uint8)
    normalised = model.normalise(images, torch.tensor([[6, 8], [4, 5]]))
    assert (normalised[0] > 0).all()
    assert (normalised[1, :, :4, :5] > 0).all() and not normalised[1, :, 4:].any() and not normalised[1, :, :, 5:].any()
    mean_colour = torch.tensor(IMAGENET_MEAN).view(3, 1, 1).expand(3, 6, 8)
    assert not model.normalise(mean_colour[None]).abs().gt(1e-6).any()  # 0 is the mean colour


def test_cat_max_ratio_redraws_crops_that_one_class_fills(tmp_path):
    """A label map that is one class but for a 10-pixel-wide stripe: most 16-wide crops hold only
    that class; with cat_max_ratio 0.75 the crop is redrawn until it holds the stripe too."""
    label = np.zeros((16, 96), np.uint8)
    label[:, 40:50] = 1
    Image.fromarray(label).save(tmp_path / "label.png")
    Image.fromarray(np.zeros((16, 96, 3), np.uint8)).save(tmp_path / "image.png")
    record = {"file_name": str(tmp_path / "image.png"), "sem_seg_file_name": str(tmp_path / "label.png")}
    mixed = {}
    for ratio in (1.0, 0.75):
        mapper = SemSegMapper(2, 255, AugmentConfig(crop_size=(16, 16), scale_range=(1.0, 1.0), cat_max_ratio=ratio))
        crops = [mapper(record, seed)["sem_seg"] for seed in range(40)]
        mixed[ratio] = sum(int(crop.unique().numel() > 1) for crop in crops)
        assert all(crop.shape == (16, 16) for crop in crops)
    assert mixed[1.0] < 20 and mixed[0.75] >= 36  # 25 of 81 offsets hold both classes; 11 draws at most


def test_test_mapper_keeps_original_size(folder_dataset):
    image_root, gt_root = folder_dataset
    out = SemSegMapper(3, 255)(load_sem_seg(gt_root, image_root)[1])
    assert out["image"].shape == (3, 40, 48) and out["sem_seg"].shape == (40, 48)


def _micro_batches(sampler, count):
    batches = iter(sampler)
    return [next(batches) for _ in range(count)]


def test_step_sampler_reshuffles_each_epoch_and_seeds_each_sample_by_its_position():
    stream = [item for batch in _micro_batches(StepSampler(5, 1, DataParallelLayout(5)), 3) for item in batch]
    passes = [[index for index, _ in stream[i : i + 5]] for i in (0, 5, 10)]
    assert all(sorted(p) == list(range(5)) for p in passes)
    assert len({tuple(p) for p in passes}) > 1
    assert len({seed for _, seed in stream}) == 15


def test_step_sampler_layouts_split_one_stream_and_resume_at_a_step():
    """2 workers x 1 micro-batch and 1 worker x 2 micro-batches take the same samples per step;
    a sampler started at step 3 continues the stream of one started at 0."""
    single = _micro_batches(StepSampler(7, 4, DataParallelLayout(4, accumulate=2)), 10)
    ranks = [_micro_batches(StepSampler(7, 4, DataParallelLayout(4, world_size=2, rank=r)), 5) for r in (0, 1)]
    assert single[0::2] == ranks[0] and single[1::2] == ranks[1]
    assert _micro_batches(StepSampler(7, 4, DataParallelLayout(4, accumulate=2), start_step=3), 4) == single[6:10]


def test_a_global_batch_that_does_not_split_is_named():
    assert split_batch(16, 2, 4) == 2
    with pytest.raises(InputError, match=r"data.batch_size=6 .* 2 worker\(s\) x train.accumulate=2"):
        split_batch(6, 2, 2)


def test_augmentation_does_not_depend_on_the_loader_processes(folder_dataset):
    image_root, gt_root = folder_dataset
    records = load_sem_seg(gt_root, image_root)
    mapper = SemSegMapper(3, 255, AugmentConfig(crop_size=(24, 24), scale_range=(0.7, 1.3), hflip_prob=0.5, color_jitter=0.3))
    batches = [build_train_loader(records, mapper, 2, workers, seed=3) for workers in (0, 2)]
    for _ in range(4):
        inline, spawned = (next(b) for b in batches)
        assert torch.equal(inline["image"], spawned["image"]) and torch.equal(inline["sem_seg"], spawned["sem_seg"])


def test_train_loader_batches_forever(folder_dataset):
    image_root, gt_root = folder_dataset
    records = load_sem_seg(gt_root, image_root)
    batches = build_train_loader(records, SemSegMapper(3, 255, AugmentConfig(crop_size=(32, 32))), 3, 0, seed=0)
    shapes = [tuple(next(batches)["image"].shape) for _ in range(5)]  # 15 samples from 4 records
    assert shapes == [(3, 3, 32, 32)] * 5


def test_a_folder_scan_is_kept_in_the_cache_and_done_again_when_the_listing_changes(folder_dataset):
    image_root, gt_root = folder_dataset
    dataset_tree = sorted(image_root.parent.rglob("*"))
    first = load_sem_seg(gt_root, image_root)
    assert scan_file(image_root).is_file() and scan_file(image_root).parent == cache_root() / "scans"
    assert sorted(image_root.parent.rglob("*")) == dataset_tree  # nothing written into the dataset's tree
    victim = image_root / "img0.jpg"  # same size and time, no longer an image: a re-scan would fail on it
    info = victim.stat()
    victim.write_bytes(b"\0" * info.st_size)
    os.utime(victim, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert load_sem_seg(gt_root, image_root) == first  # the headers were not opened again
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(image_root / "img9.jpg")
    shutil.copy(gt_root / "img1.png", gt_root / "img9.png")
    with pytest.raises(InputError, match=f"cannot read image {victim}"):  # a new listing: scanned again
        load_sem_seg(gt_root, image_root)
