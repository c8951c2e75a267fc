"""The papers' grid specs: each dry-runs (cells and resources listed, nothing run) and every
case of its reference file selects cells the spec has."""

from pathlib import Path

import pytest

from harness.check import load_reference
from harness.cli import main
from harness.config import config_hash
from harness.engine import cell_tags
from harness.grid import expand, load_grid

ROOT = Path(__file__).resolve().parents[1]
_SPECS = sorted((ROOT / "jobs" / "papers").glob("*.yaml"))


def test_there_is_a_spec_per_paper_table():
    assert [p.stem for p in _SPECS] == ["ecenet_table1_ade20k", "protoseg_table1_ade20k", "protoseg_table2_cityscapes",
                                        "ssa_table2"]


@pytest.mark.parametrize("spec", _SPECS, ids=lambda p: p.stem)
def test_dry_run_lists_every_cell_and_the_reference_selects_them(spec, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["grid", str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    cells = expand(load_grid(spec))
    assert f"{len(cells)} cells; per cell 8 worker(s) x 7 CPU, 1 GPU (training)" in out  # the papers' 8 GPUs
    assert all(f"{c.model.classifier}@{c.model.backbone}/{c.model.neck}" in out for c in cells)
    assert not (tmp_path / "mlflow.db").exists()  # a dry run touches no store
    if spec.name.startswith("ecenet"):  # ECENet on the backbone's stages, its baselines Table 1's models
        necks = {(c.model.classifier, c.model.backbone): (c.model.neck, c.model.embed_dim) for c in cells}
        assert necks == {("ece", b): ("stages", 256) for b in ("resnet101_os8", "swin_b", "swin_l")} | {
            ("softmax", "resnet101_os8"): ("deeplabv3plus", 512), ("softmax", "swin_b"): ("upernet", 512),
            ("softmax", "swin_l"): ("upernet", 512)}
    else:  # ProtoSeg's and SSA's rows: the papers' decoders
        papers = {"resnet101_os8": "fcn", "swin_b": "upernet", "mit_b4": "segformer",
                  "hrnetv2_w48": "ocr" if spec.name.startswith("ssa") else "hrnet_fcn"}  # SSA's HRNet rows: OCRNet
        assert {c.model.backbone: c.model.neck for c in cells} == {b: papers[b] for b in {c.model.backbone for c in cells}}
    tags = [cell_tags(c) for c in cells]
    reference = load_reference(ROOT / "jobs" / "reference" / "papers" / spec.name)
    assert reference.cases
    # the numbers hold for this spec's cells exactly: a cell trained otherwise is not compared with them
    assert all(case.recipe.spec == f"jobs/papers/{spec.name}" for case in reference.cases)
    assert set(reference.cases[0].recipe.spec_cells) == {config_hash(c) for c in cells}
    for case in reference.cases:
        assert any(all(t.get(k) == str(v) for k, v in case.select.items()) for t in tags), case.select


@pytest.mark.parametrize("spec", _SPECS, ids=lambda p: p.stem)
def test_every_paper_cell_names_its_weights_protocol_and_recipe_and_the_dry_run_lists_them(spec, capsys, tmp_path,
                                                                                           monkeypatch):
    """ImageNet weights per backbone (a file under $SEGHEADS_WEIGHTS; none would train a random
    encoder), the paper's test protocol and MMSeg's initialisation, as the dry run says."""
    monkeypatch.chdir(tmp_path)
    assert main(["grid", str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for cfg in expand(load_grid(spec)):
        checkpoint = cfg.model.backbone_kwargs.get("checkpoint", "")
        assert checkpoint.startswith("weights:") and cfg.model.backbone_kwargs.get("checkpoint_strict", True), cfg.model
        assert cfg.model.init == "mmseg"
        assert f"      weights: {checkpoint} (not on this machine)\n" in out  # no $SEGHEADS_WEIGHTS here
        assert f"      eval: {cfg.eval.describe()}" in out
        if cfg.data.dataset.startswith("cityscapes"):  # ProtoSeg §5.1: sliding windows of 768x768
            assert cfg.eval.mode == "slide" and cfg.eval.crop_size == [768, 768]
        else:  # short side = the training crop, long side capped as MMSeg's Resize(scale=(4 x crop, crop))
            assert cfg.eval.short_side == cfg.data.image_size and cfg.eval.max_long_side == 4 * cfg.data.image_size
        if spec.name.startswith("ecenet"):  # Table 1's ms column: 6 scales with flips
            ms = cfg.eval.protocol("ms_flip")
            assert ms.scales == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] and ms.flip and ms.short_side == cfg.eval.short_side


@pytest.mark.parametrize("spec", _SPECS, ids=lambda p: p.stem)
def test_paper_param_groups_name_parameters_of_their_models(spec):
    """Each cell's ``train.param_groups`` keys match parameters of its model (built on the meta
    device, without its weights), so no paper recipe is silently dropped."""
    import dataclasses

    import torch

    from harness.modeling import INITIAL_WEIGHTS, build_segmentor, without_checkpoint
    from harness.solver import build_optimizer

    seen = set()
    for cfg in expand(load_grid(spec)):
        key = (cfg.model.backbone, cfg.model.neck, cfg.model.classifier, str(cfg.train.param_groups))
        if key in seen or not cfg.train.param_groups:
            continue
        seen.add(key)
        bare = dataclasses.replace(cfg.model, backbone_kwargs=without_checkpoint(cfg.model.backbone_kwargs, INITIAL_WEIGHTS))
        with torch.device("meta"):
            model = build_segmentor(dataclasses.replace(cfg, model=bare), 150, 255)
        names = [name for name, _ in model.named_parameters()]
        assert all(any(key in name for name in names) for key in cfg.train.param_groups), key
        groups = build_optimizer(model, cfg.train).param_groups
        assert sum(len(g["params"]) for g in groups) == len(names)
        assert all(g["lr"] == cfg.train.lr * g["lr_mult"] for g in groups)
    assert seen


@pytest.mark.parametrize("spec", _SPECS, ids=lambda p: p.stem)
def test_every_paper_cell_trains_with_mmsegs_pipeline_loss_and_schedule(spec):
    """MMSeg's training pipeline for the dataset (RandomResize scale (2048, 512), (2560, 640) for the
    640 crops, Cityscapes' (2048, 1024); ratio 0.5-2; cat_max_ratio 0.75; flip; PhotoMetricDistortion; no segheads jitter), its
    schedules (LinearLR then PolyLR; SGD rows PolyLR(0.9, eta_min 1e-4) without warm-up, AdamW rows
    warm-up 1500 from 1e-6 then PolyLR(1.0)), the softmax baselines' CE over all pixels and each
    paper head's loss average from its preset."""
    for cfg in expand(load_grid(spec)):
        d, t = cfg.data, cfg.train
        short = 1024 if d.dataset.startswith("cityscapes") else max(d.crop_size)  # MMSeg's scale=(long, short)
        long = {512: 2048, 640: 2560, 1024: 2048}[short]
        assert (d.short_side or max(d.crop_size), d.max_long_side) == (short, long), (cfg.model.backbone, d)
        assert d.scale_range == [0.5, 2.0] and d.cat_max_ratio == 0.75 and d.hflip_prob == 0.5
        assert d.resize_backend == "cv2"
        assert d.photometric.enabled and d.color_jitter == 0
        assert t.schedule == "mmseg"
        if t.optimizer == "sgd":
            assert (t.lr, t.weight_decay, t.warmup_iters, t.poly_power, t.min_lr) == (0.01, 0.0005, 0, 0.9, 0.0001)
            assert t.param_groups == {"": {"decay_mult": 1}}
        else:
            assert (t.lr, t.weight_decay, t.warmup_iters, t.warmup_ratio, t.poly_power, t.min_lr) == (
                6e-5, 0.01, 1500, 1e-6, 1.0, 0.0)
        expected = {"softmax": "all", "protoseg": "labelled", "ssa": "all", "ece": "all"}[cfg.model.classifier]
        assert cfg.model.classifier_kwargs["loss_average"] == expected
