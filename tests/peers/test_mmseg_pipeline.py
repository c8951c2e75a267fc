"""segheads' training augmentation against MMSegmentation's ADE20K training pipeline
(``configs/_base_/datasets/ade20k.py``: LoadImageFromFile, LoadAnnotations, RandomResize(scale
(2048, 512), ratio 0.5-2), RandomCrop(512, cat_max_ratio 0.75), RandomFlip(0.5),
PhotoMetricDistortion, PackSegInputs), with the same random draws: MMSeg's transforms draw from
NumPy's global generator, segheads' mapper from a generator seeded per sample; both are given
the same state. Labels must be equal, images within one grey level; the padding to the crop is
MMSeg's ``SegDataPreProcessor``'s (labels 255, pixels 0 after normalisation)."""

import numpy as np
import pytest
import torch
from PIL import Image

from harness.config import DataConfig, from_dict
from harness.data import AugmentConfig, SemSegMapper
from harness.modeling.segmentor import IMAGENET_MEAN, IMAGENET_STD

_SEEDS = range(24)


def _scene(path, height, width, seed):
    """A JPEG image with structure (smooth colour fields, edges) and its PNG label map: a dominant
    class over most of it (so cat_max_ratio has crops to refuse), blocks of others, ignore pixels."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC)).astype(np.int16)
    image = np.clip(image + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)
    label = np.zeros((height, width), np.uint8)
    for _ in range(6):
        top, left = rng.integers(0, height - height // 5), rng.integers(0, width - width // 5)
        label[top : top + height // 5, left : left + width // 5] = rng.integers(1, 150)
    label[: height // 12] = 255
    Image.fromarray(image).save(path / "image.jpg", quality=92)
    Image.fromarray(label).save(path / "label.png")
    return {"file_name": str(path / "image.jpg"), "sem_seg_file_name": str(path / "label.png"),
            "height": height, "width": width}


def _mmseg_pipeline(crop, scale, cat_max_ratio, backend):
    from mmseg.registry import TRANSFORMS

    return [TRANSFORMS.build(t) for t in (
        dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", reduce_zero_label=False),
        dict(type="RandomResize", scale=scale, ratio_range=(0.5, 2.0), keep_ratio=True, backend=backend),
        dict(type="RandomCrop", crop_size=crop, cat_max_ratio=cat_max_ratio), dict(type="RandomFlip", prob=0.5),
        dict(type="PhotoMetricDistortion"), dict(type="PackSegInputs"))]


def _run_mmseg(pipeline, record, seed):
    """MMSeg's pipeline on ``record`` with NumPy's global generator in segheads' state for ``seed``."""
    np.random.set_state(np.random.RandomState(np.random.MT19937(seed)).get_state())
    results = {"img_path": record["file_name"], "seg_map_path": record["sem_seg_file_name"],
               "reduce_zero_label": False, "seg_fields": []}
    for transform in pipeline:
        results = transform(results)
    image = results["inputs"].flip(0)  # BGR -> RGB
    return image, results["data_samples"].gt_sem_seg.data[0].long()


@pytest.mark.parametrize("size, crop, short_side, backend", [
    ((512, 683), (512, 512), None, "cv2"), ((300, 410), (512, 512), None, "cv2"),
    ((512, 1024), (512, 1024), None, "cv2"), ((1024, 2048), (768, 768), 1024, "cv2"), ((300, 410), (512, 512), None, "pillow")])
def test_augmented_pairs_equal_mmsegs_with_the_same_draws(mmseg, tmp_path, size, crop, short_side, backend):
    """ADE20K's pipeline (and Cityscapes': scale (2048, 1024) with a 512x1024 crop, and ProtoSeg's
    768 crop; and mmcv's Pillow resize): every draw (ratio, crops redrawn by cat_max_ratio, flip,
    each distortion) the same; labels equal, images within a grey level (in practice equal), the
    rest of the crop padding."""
    record = _scene(tmp_path, *size, seed=size[0])
    data = from_dict(DataConfig, {"image_size": list(crop), "scale_range": [0.5, 2.0], "short_side": short_side,
                                  "max_long_side": 2048, "resize_backend": backend, "cat_max_ratio": 0.75,
                                  "hflip_prob": 0.5, "color_jitter": 0.0, "photometric": {"enabled": True}}, "data")
    mapper = SemSegMapper(150, 255, AugmentConfig.from_config(data))
    pipeline = _mmseg_pipeline(crop, (2048, short_side or max(crop)), 0.75, backend)
    padded = 0
    for seed in _SEEDS:
        expected_image, expected_label = _run_mmseg(pipeline, record, seed)
        ours = mapper(record, seed)
        rows, cols = ours["image_size"].tolist()
        assert (rows, cols) == tuple(expected_label.shape), seed
        assert torch.equal(ours["sem_seg"][:rows, :cols], expected_label), seed
        difference = (ours["image"][:, :rows, :cols].int() - expected_image.int()).abs().max().item()
        assert difference <= 1, (seed, difference)
        assert ours["image"].shape[1:] == ours["sem_seg"].shape == crop
        assert (ours["sem_seg"][rows:] == 255).all() and (ours["sem_seg"][:, cols:] == 255).all()
        padded += (rows, cols) != crop
    assert 0 < padded < len(_SEEDS) or size[0] > 300  # the small image pads on some draws, not all


def test_padding_is_zero_after_normalisation_as_mmsegs_data_preprocessor(mmseg):
    """MMSeg pads the normalised batch with 0 (``SegDataPreProcessor(pad_val=0, seg_pad_val=255)``);
    segheads' model zeroes the rows and columns each image did not fill."""
    from mmengine.structures import PixelData
    from mmseg.models.data_preprocessor import SegDataPreProcessor
    from mmseg.structures import SegDataSample

    from harness.modeling import Segmentor

    preprocessor = SegDataPreProcessor(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), bgr_to_rgb=True,
                                       pad_val=0, seg_pad_val=255, size=(40, 48))
    generator = torch.Generator().manual_seed(0)
    rgb = [torch.randint(0, 256, (3, h, w), generator=generator, dtype=torch.uint8) for h, w in ((40, 48), (31, 20))]
    samples = []
    for image in rgb:
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=torch.zeros(1, *image.shape[1:], dtype=torch.long))
        samples.append(sample)
    expected = preprocessor({"inputs": [image.flip(0) for image in rgb], "data_samples": samples}, training=True)["inputs"]
    padded = torch.stack([torch.nn.functional.pad(image, (0, 48 - image.shape[2], 0, 40 - image.shape[1])) for image in rgb])
    sizes = torch.tensor([image.shape[1:] for image in rgb])
    model = Segmentor(torch.nn.Identity(), torch.nn.Identity(), None)
    torch.testing.assert_close(model.normalise(padded, sizes), expected)
