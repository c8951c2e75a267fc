"""Whole models at the papers' settings, without training: parameters and multiply-adds
against the papers' tables (``jobs/reference/papers/*_models.yaml``), counted on the meta
device, where nothing is allocated or computed."""

from pathlib import Path

import pytest
import torch

from harness.check import load_reference
from harness.config import RunConfig, apply_overrides
from harness.measure import count_flops, count_parameters
from harness.modeling import build_segmentor

_PAPERS = Path(__file__).resolve().parents[1] / "jobs" / "reference" / "papers"
_MODEL_KEYS = ("backbone", "neck", "classifier", "num_classes", "embed_dim", "image_size")


def _counts(select: dict, device: str = "meta") -> dict:
    """Parameters and FLOPs of the model a case selects; keys beyond ``_MODEL_KEYS`` are classifier kwargs."""
    overrides = [f"model.{key}={select[key]}" for key in ("backbone", "neck", "classifier", "embed_dim")]
    overrides += [f"model.classifier_kwargs.{k}={v}" for k, v in select.items() if k not in _MODEL_KEYS]
    cfg = apply_overrides(RunConfig(), overrides)
    torch.manual_seed(0)
    with torch.device(device):
        model = build_segmentor(cfg, select["num_classes"], 255)
    size = select["image_size"]
    return {**count_parameters(model), **count_flops(model, torch.zeros(1, 3, size, size, device=device))}


def test_meta_device_counts_equal_counts_on_real_tensors():
    select = {"backbone": "resnet10t", "neck": "stages", "classifier": "ece", "num_classes": 11, "embed_dim": 32,
              "image_size": 64}
    assert _counts(select) == _counts(select, "cpu")


@pytest.mark.parametrize("path", sorted(_PAPERS.glob("*_models.yaml")), ids=lambda p: p.stem)
def test_whole_model_counts_match_the_papers(path):
    reference = load_reference(path)
    assert reference.cases
    failures = [f"{case.select}: {message}" for case in reference.cases
                for message in case.failures(_counts(case.select))]
    assert not failures, "\n".join(failures)
