"""A paper spec's baseline cell trains what MMSegmentation trains: for each baseline row of
``jobs/papers/`` (FCN-R101, UperNet-Swin-B, SegFormer-MiT-B4, HRNetV2-W48 FCN, DeepLabV3+-R101,
OCRNet-HRNetV2-W48), MMSeg's model from its own config and segheads' from the spec's cell, on the
same (random) weights and the same batch, take one training step each: segheads' ``Trainer``,
MMSeg's forward, ``parse_losses`` and ``OptimWrapper`` (its ``train_step``), with the optimiser,
parameter groups and schedulers MMEngine builds from the config, at iterations 0 (warm-up), 1500
and 80000 of the schedule. Dropout and drop-path draw the same masks (both seeded with segheads'
micro-batch seed).

The models run in float64, so that only a difference in what is computed can fail: the losses
agree within 1e-5, every gradient within 1e-4 of its norm, every parameter after the step within
1e-6. (In float32, rounding through 50-odd layers and saturated softmaxes, OCRNet's over pixels,
moves a few gradients by 1e-4 relative, and AdamW's first step, lr x g / (|g| + eps), turns that
into 1e-6 on weights whose gradient is near eps; the float32 forwards are compared in
``test_mmseg_encoders.py`` and ``test_mmseg_swin.py``.)
"""

import dataclasses
from pathlib import Path

import pytest
import torch
from peers.mmseg_peer import mmseg_state_to_segheads, randomise

from harness.engine.trainer import Trainer, micro_batch_seed
from harness.grid.spec import expand, load_grid
from harness.modeling import build_segmentor

_PAPERS = Path(__file__).resolve().parents[2] / "jobs" / "papers"
# (spec, backbone) -> (MMSeg config, its decoder's name in mmseg_state_to_segheads). MMSeg's
# SegFormer configs give every MiT a 256-wide decoder; the paper's MiT-B4 row (64.1 M parameters)
# is SegFormer's own 768, which the spec runs: MMSeg's model is built at the spec's width.
_ROWS = {
    ("protoseg_table1_ade20k", "resnet101_os8"): ("fcn/fcn_r101-d8_4xb4-160k_ade20k-512x512.py", "fcn"),
    ("protoseg_table1_ade20k", "hrnetv2_w48"): ("hrnet/fcn_hr48_4xb4-160k_ade20k-512x512.py", "hrnet_fcn"),
    ("protoseg_table1_ade20k", "swin_b"): ("swin/swin-base-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py",
                                           "upernet"),
    ("protoseg_table1_ade20k", "mit_b4"): ("segformer/segformer_mit-b4_8xb2-160k_ade20k-512x512.py", "segformer"),
    ("ecenet_table1_ade20k", "resnet101_os8"): ("deeplabv3plus/deeplabv3plus_r101-d8_4xb4-160k_ade20k-512x512.py",
                                                "deeplabv3plus"),
    ("ssa_table2", "hrnetv2_w48"): ("ocrnet/ocrnet_hr48_4xb4-160k_ade20k-512x512.py", "ocr"),
}
_LOSSES = {"decode.loss_ce": "ce", "aux.loss_ce": "aux", "decode_0.loss_ce": "regions", "decode_1.loss_ce": "ce"}
_ITERATIONS = (0, 1500, 80000)
_SIZE = (64, 96)


def _batch_norm(node):
    """A config with SyncBN (one process here) as BN."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "type" and value == "SyncBN":
                node[key] = "BN"
            else:
                _batch_norm(value)
    elif isinstance(node, list):
        for value in node:
            _batch_norm(value)


def _mmseg(configs: Path, config: str, width: int):
    """(config, model): MMSeg's model of ``config`` (BN for SyncBN, nothing downloaded, no padding
    beyond the batch), initialised by MMSeg, then ``randomise``d."""
    from mmengine.config import Config  # MMSegmentation's, imported where it is (the mmseg fixture skips otherwise)
    from mmseg.registry import MODELS

    cfg = Config.fromfile(configs / config)
    if config.startswith("segformer/"):
        cfg.model.decode_head.channels = width
    cfg.model.pretrained = None
    cfg.model.backbone.init_cfg = None
    cfg.model.data_preprocessor.size = _SIZE
    _batch_norm(cfg.model)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return cfg, randomise(model, seed=11)


def _cell(spec: str, backbone: str):
    """The spec's softmax baseline cell on ``backbone``, as the grid expands it."""
    return next(c for c in expand(load_grid(_PAPERS / f"{spec}.yaml"))
                if c.model.backbone == backbone and c.model.classifier == "softmax")


def _with_weights(cell, path):
    """``cell`` whose encoder starts from ``path`` (MMSeg's model's, written by the test)."""
    kwargs = {**cell.model.backbone_kwargs, "checkpoint": str(path)}
    return dataclasses.replace(cell, model=dataclasses.replace(cell.model, backbone_kwargs=kwargs))


def _batch():
    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (2, 3, *_SIZE), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 150, (2, *_SIZE), generator=generator)
    labels[0, :9] = 255  # ignored rows: where the loss averages differ
    labels[1, :, -20:] = 255
    return images, labels


def _mmseg_step(model, cfg, images, labels, iteration, seed):
    """MMSeg's train_step (``OptimWrapper.update_params``: backward, step, zero_grad), split to read
    the gradients: (losses, grads by name, params after)."""
    from mmengine.optim import OptimWrapper, build_optim_wrapper
    from mmengine.registry import PARAM_SCHEDULERS
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    # The config's schedulers, stepped to ``iteration`` on one group per base rate (MMEngine's
    # constructor gives each parameter a group of its own; each group's schedule depends on its
    # base rate only), then the rates copied to the groups with that base rate.
    bases = sorted({group["lr"] for group in wrapper.param_groups})
    rates = OptimWrapper(torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": base}
                                          for base in bases], lr=bases[0]))
    schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=rates)) for s in cfg.param_scheduler]
    for _ in range(iteration):
        for scheduler in schedulers:
            scheduler.step()
    at = {base: group["lr"] for base, group in zip(bases, rates.param_groups)}
    for group in wrapper.param_groups:
        group["lr"] = at[group["lr"]]
    samples = []
    for label in labels:
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=label[None])
        samples.append(sample)
    model.train()
    torch.manual_seed(seed)
    data = model.data_preprocessor({"inputs": [image.flip(0) for image in images], "data_samples": samples}, True)
    losses = model(**data, mode="loss")
    total, _ = model.parse_losses(losses)
    wrapper.backward(total)
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    wrapper.step()
    wrapper.zero_grad()
    return ({name: value.item() for name, value in losses.items() if "loss" in name}, grads,
            {name: p.detach() for name, p in model.named_parameters()})  # read before the next iteration reloads them


def _segheads_step(model, cell, images, labels, iteration):
    """One ``Trainer`` step at ``iteration``: (losses by name, the gradients its optimiser stepped
    with, params after)."""
    batch = {"image": images, "sem_seg": labels, "image_size": torch.tensor([_SIZE] * len(images))}
    trainer = Trainer(model, iter([batch]), cell.train, torch.device("cpu"))
    trainer.iteration = iteration
    for group, base, schedule in zip(trainer.optimizer.param_groups, trainer.scheduler.base_lrs,
                                     trainer.scheduler.lr_lambdas):
        group["lr"] = base * schedule(iteration)
    names = {id(p): name for name, p in model.named_parameters()}
    grads = {}

    trainer.optimizer.register_step_pre_hook(lambda optimizer, *args: grads.update(
        {names[id(p)]: p.grad.clone() for group in optimizer.param_groups for p in group["params"] if p.grad is not None}))
    model.train()
    trainer.run_step()
    losses = dict(zip(trainer.loss_names, trainer.step_losses.tolist()))
    return losses, grads, {name: p.detach() for name, p in model.named_parameters()}


@pytest.mark.parametrize("spec, backbone", sorted(_ROWS), ids=lambda v: v)
def test_one_training_step_equals_mmsegs_train_step(mmseg, mmseg_configs, tmp_path, spec, backbone):
    torch.set_num_threads(2)
    config, decoder = _ROWS[(spec, backbone)]
    cell = _cell(spec, backbone)
    classes, ignore = 150, 255
    cfg, reference = _mmseg(mmseg_configs, config, cell.model.embed_dim)
    torch.save({"state_dict": {k: v for k, v in reference.state_dict().items() if k.startswith("backbone.")}},
               tmp_path / "mmseg.pth")
    ours = build_segmentor(_with_weights(cell, tmp_path / "mmseg.pth"), classes, ignore)
    reference.double()
    ours.double()
    initial = {k: v.clone() for k, v in reference.state_dict().items()}
    state, to_mmseg = mmseg_state_to_segheads(initial, ours.state_dict(), decoder)
    ours.load_state_dict(state)
    initial_ours = {k: v.clone() for k, v in ours.state_dict().items()}
    images, labels = _batch()
    for iteration in _ITERATIONS:
        reference.load_state_dict(initial)
        ours.load_state_dict(initial_ours)
        seed = micro_batch_seed(cell.train.seed, iteration, 0, 1)
        expected_losses, expected_grads, expected_params = _mmseg_step(reference, cfg, images, labels, iteration, seed)
        losses, grads, params = _segheads_step(ours, cell, images, labels, iteration)
        assert {_LOSSES[k] for k in expected_losses} == set(losses), iteration
        for name, value in expected_losses.items():
            assert losses[_LOSSES[name]] == pytest.approx(value, abs=1e-5), (iteration, name)
        assert {to_mmseg[k][0] for k in grads} == set(expected_grads), iteration
        for name, grad in grads.items():
            key, view = to_mmseg[name]
            expected = view(expected_grads[key])
            error = (grad - expected).norm().item()
            # 1e-4 of the gradient's norm; 1e-12 absolute for gradients that are 0 in exact arithmetic
            # (a key projection's bias cannot change a softmax over keys): rounding noise
            assert error <= 1e-4 * expected.norm().item() + 1e-12, (iteration, name, error, expected.norm().item())
        for name, value in params.items():
            key, view = to_mmseg[name]
            torch.testing.assert_close(value, view(expected_params[key]), atol=1e-6, rtol=0,
                                       msg=lambda m, n=name: f"iteration {iteration}, {n}: {m}")
