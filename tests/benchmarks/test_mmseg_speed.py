"""segheads against MMSegmentation 1.2.2, speed, run on demand (MMSeg importable, as in CI):
``python -m pytest tests/benchmarks -s -k mmseg``.

- The training pipeline per image: segheads' mapper with the ADE20K paper specs' augmentation
  (``jobs/papers/protoseg_table1_ade20k.yaml``'s data section) against MMSeg's ADE20K ``train_pipeline`` (LoadImageFromFile, LoadAnnotations, RandomResize,
  RandomCrop with cat_max_ratio, RandomFlip, PhotoMetricDistortion, PackSegInputs), on
  ADE20K-sized JPEG/PNG pairs (about 512 x 683, 150 classes), one process, images interleaved.
- Whole-image inference: ``predict_logits`` (uint8 image to logits at its size) against MMSeg's
  ``data_preprocessor`` + ``inference`` on the same SegFormer MiT-B0 model at 512 x 683.

Medians, printed as segheads / MMSeg ratios and kept in ``extra_info``; nothing is asserted
about time."""

import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import timing
import torch
from peers.mmseg_peer import import_mmseg
from PIL import Image

from harness.config import DataConfig, EvalConfig, RunConfig, apply_overrides, from_dict
from harness.data import AugmentConfig, SemSegMapper
from harness.evaluation import predict_logits
from harness.grid import load_grid
from harness.modeling import build_segmentor

_PAIRS = 600
_SPEC = Path(__file__).resolve().parents[2] / "jobs" / "papers" / "protoseg_table1_ade20k.yaml"  # its data section


def _config(path: str):
    """MMSeg's config ``path`` (mmengine imported here: the benchmarks are skipped, saying so, without it)."""
    from mmengine.config import Config

    return Config.fromfile(_configs() / path)


def _configs() -> Path:
    """The configs MMSegmentation ships inside its package."""
    return Path(import_mmseg().__file__).parent / ".mim" / "configs"


def _pairs(folder, count):
    """ADE20K-like pairs: JPEG photos-like images 480-683 px wide, PNG label maps of blobs of 150 classes."""
    rng = np.random.default_rng(0)
    records = []
    for index in range(count):
        height, width = 512, int(rng.integers(480, 684))
        image = cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (width, height), interpolation=cv2.INTER_CUBIC)
        label = cv2.resize(rng.integers(0, 150, (10, 14), dtype=np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
        label[rng.random((height, width)) < 0.05] = 255
        Image.fromarray(image).save(folder / f"{index}.jpg", quality=90)
        Image.fromarray(label).save(folder / f"{index}.png")
        records.append({"file_name": str(folder / f"{index}.jpg"), "sem_seg_file_name": str(folder / f"{index}.png")})
    return records


def test_training_pipeline_per_image_against_mmsegs(benchmark, tmp_path):
    import_mmseg()
    from mmseg.registry import TRANSFORMS

    cv2.setNumThreads(1)
    records = _pairs(tmp_path, _PAIRS)
    mapper = SemSegMapper(150, 255, AugmentConfig.from_config(from_dict(DataConfig, load_grid(_SPEC).data, "data")))
    steps = _config("_base_/datasets/ade20k.py").train_pipeline
    for step in steps:  # the label maps here are already reduced, as segheads' prepared ADE20K's are
        if step["type"] == "LoadAnnotations":
            step["reduce_zero_label"] = False
    pipeline = [TRANSFORMS.build(step) for step in steps]

    def mmseg(record):
        results = {"img_path": record["file_name"], "seg_map_path": record["sem_seg_file_name"],
                   "reduce_zero_label": False, "seg_fields": []}
        for transform in pipeline:
            results = transform(results)

    times = {"segheads": [], "mmseg": []}
    for index, record in enumerate(records):
        for name, run in (("segheads", lambda: mapper(record, index)), ("mmseg", lambda: mmseg(record))):
            began = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - began)
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["segheads"] / medians["mmseg"]
    benchmark.extra_info.update({**{f"{k}_ms": v * 1e3 for k, v in medians.items()}, "ratio": ratio})
    print(f"\ntraining pipeline per image, median of {_PAIRS}: segheads {medians['segheads'] * 1e3:.1f} ms, "
          f"MMSeg {medians['mmseg'] * 1e3:.1f} ms, ratio {ratio:.2f}")
    benchmark.pedantic(lambda: mapper(records[0], 0), rounds=1, iterations=1)


def test_whole_image_inference_against_mmsegs(benchmark):
    import_mmseg()
    from mmseg.registry import MODELS

    cfg = _config("segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py")
    cfg.model.backbone.init_cfg = None
    cfg.model.data_preprocessor.size = None
    cfg.model.decode_head.norm_cfg = dict(type="BN", requires_grad=True)
    reference = MODELS.build(cfg.model).eval()
    ours = build_segmentor(apply_overrides(RunConfig(), ["model.backbone=mit_b0", "model.neck=segformer",
                                                         "model.embed_dim=256"]), 150, 255).eval()
    image = torch.randint(0, 256, (3, 512, 683), dtype=torch.uint8)
    metas = [dict(img_shape=(512, 683), ori_shape=(512, 683), pad_shape=(512, 683), padding_size=[0, 0, 0, 0])]

    @torch.no_grad()
    def mmseg():
        data = reference.data_preprocessor({"inputs": [image.flip(0)]}, False)
        return reference.inference(data["inputs"], metas)

    medians = timing.interleaved_medians({"segheads": lambda: predict_logits(ours, image, EvalConfig()),
                                          "mmseg": mmseg}, rounds=15, warmup=2)
    ratio = medians["segheads"] / medians["mmseg"]
    benchmark.extra_info.update({**{f"{k}_ms": v * 1e3 for k, v in medians.items()}, "ratio": ratio})
    print(f"\nwhole-image inference 512x683, SegFormer MiT-B0, 150 classes: segheads {medians['segheads'] * 1e3:.0f} ms, "
          f"MMSeg {medians['mmseg'] * 1e3:.0f} ms, ratio {ratio:.2f}")
    benchmark.pedantic(lambda: predict_logits(ours, image, EvalConfig()), rounds=1, iterations=1)
