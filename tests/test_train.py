"""The engine in one process: the loop and its hooks, no host copies between log periods,
checkpoints that resume to the uninterrupted run's weights, autocast with float32 head maths."""

import shutil

import pytest
import torch
from torch.overrides import TorchFunctionMode

from classifiers import ClassifierOutput, PixelClassifier, register_classifier
from harness.config import RunConfig, TrainConfig, apply_overrides
from harness.data import AugmentConfig, DatasetCatalog, SemSegMapper, build_train_loader
from harness.engine import (
    LocalContext,
    MetricsHook,
    NonFiniteLossError,
    Trainer,
    checkpoint,
    resolve_sync_bn,
    seed_everything,
    train_cell,
)
from harness.errors import InputError
from harness.modeling import build_segmentor
from harness.solver import lr_at

_TINY = ["model.backbone=test_convnext", "model.embed_dim=32", "data.image_size=48", "train.warmup_iters=5",
         "data.num_workers=0", "measure.enabled=false", "train.threads=2"]
_CPU = torch.device("cpu")


def _setup(overrides, classifier="softmax"):
    cfg = apply_overrides(RunConfig(), _TINY + [f"model.classifier={classifier}"] + overrides)
    seed_everything(cfg.train.seed)
    torch.set_num_threads(2)
    model = build_segmentor(cfg, 11, 255)
    records = DatasetCatalog.get("digits_sem_seg_train")[:64]
    mapper = SemSegMapper(11, 255, AugmentConfig(crop_size=(48, 48), hflip_prob=0.0))
    return cfg, model, build_train_loader(records, mapper, 8, 0, seed=0)


def _trainer(cfg, model, batches):
    trainer = Trainer(model, batches, cfg.train, _CPU)
    trainer.register_hooks([MetricsHook(LocalContext(_CPU), cfg.train.log_period)])
    return trainer


@pytest.mark.parametrize("classifier", ["softmax", "query"])
def test_short_real_training_lowers_the_loss(classifier):
    cfg, model, batches = _setup(["train.iters=60", "train.log_period=10", "train.lr=0.003"], classifier)
    result = _trainer(cfg, model, batches).train()
    curve = [row["loss/total"] for row in result.history]
    assert len(curve) == 6 and result.history[-1]["iteration"] == 60
    assert curve[-1] < 0.7 * curve[0]
    assert {"loss/ce", "loss/total", "lr"} <= set(result.history[0])


class _HostCopies(TorchFunctionMode):
    """Counts the tensor methods that copy a value to the host (a device sync on CUDA)."""

    NAMES = {"item", "__float__", "__int__", "__bool__", "tolist", "cpu", "numpy"}

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.NAMES:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("classifier", ["softmax", "query"])
def test_a_training_step_copies_nothing_to_the_host_and_the_log_period_once(classifier):
    cfg, model, loader = _setup(["train.iters=6", "train.log_period=3", "train.grad_clip=1.0",
                                 "train.accumulate=2"], classifier)
    trainer = _trainer(cfg, model, iter([next(loader) for _ in range(12)]))  # the data path is not the step
    steps = []
    with _HostCopies() as copies:
        for _ in range(cfg.train.iters):
            trainer.run_step()
            trainer.iteration += 1
            steps.append(len(copies.calls))
            trainer._hooks[0].after_step()
    assert steps[0] == 0 and steps[1] == 0  # two steps (four micro-batches), no copy
    assert copies.calls.count("cpu") == 2  # one per log period
    assert [row["iteration"] for row in trainer.history] == [3, 6]


@register_classifier("test_nan_after_two")
class _NanAfterTwo(PixelClassifier):
    def __init__(self, num_classes, in_channels, ignore_index=255):
        super().__init__(num_classes, in_channels, ignore_index)
        self.proj = torch.nn.Conv2d(in_channels, num_classes, 1)
        self.calls = 0

    def forward(self, features, targets=None):
        logits = self.proj(features.pixel)
        if targets is None:
            return ClassifierOutput(logits)
        self.calls += 1
        bad = float("nan") if self.calls > 2 else 0.0
        return ClassifierOutput(logits, {"ce": self.cross_entropy(logits, targets) + bad})


def test_non_finite_loss_names_its_iteration_at_the_end_of_the_period():
    cfg, model, batches = _setup(["train.iters=10", "train.log_period=5"], classifier="test_nan_after_two")
    trainer = _trainer(cfg, model, batches)
    with pytest.raises(NonFiniteLossError, match="iteration 2") as info:
        trainer.train()
    assert info.value.iteration == 2 and trainer.iteration == 5


def test_lr_schedule_warms_up_then_decays_to_zero():
    cfg = TrainConfig(iters=100, warmup_iters=10, poly_power=1.0)
    factors = [lr_at(i, cfg, 1.0) for i in range(101)]
    assert factors[0] < 0.01 and factors[10] == pytest.approx(0.9)
    assert all(a < b for a, b in zip(factors[:10], factors[1:10]))
    assert factors[-1] == 0.0 and factors[50] == pytest.approx(0.5)


def test_mmseg_schedule_is_linear_warmup_then_poly_from_its_end_to_a_floor():
    """MMSeg's Swin/SegFormer recipe in small: LinearLR(1e-6) over [0, 4), then PolyLR(power 1) over
    [4, 10); MMEngine counts end - begin - 1 steps, so each reaches its end value a step early."""
    cfg = TrainConfig(iters=10, warmup_iters=4, warmup_ratio=1e-6, poly_power=1.0, schedule="mmseg")
    lrs = [lr_at(i, cfg, 2.0) for i in range(12)]
    assert lrs[:4] == pytest.approx([2e-6, 2e-6 + (2 - 2e-6) / 3, 2e-6 + 2 * (2 - 2e-6) / 3, 2.0])
    assert lrs[4:] == pytest.approx([2.0, 1.6, 1.2, 0.8, 0.4, 0.0, 0.0, 0.0])
    floored = TrainConfig(iters=11, warmup_iters=0, poly_power=0.9, min_lr=1e-4, schedule="mmseg", lr=0.01)
    assert lr_at(0, floored, 0.01) == pytest.approx(0.01) and lr_at(10, floored, 0.01) == pytest.approx(1e-4)
    assert lr_at(5, floored, 0.01) == pytest.approx(1e-4 + (0.01 - 1e-4) * 0.5 ** 0.9)


@pytest.mark.parametrize("classifier", ["softmax", "protoseg"])
def test_a_cell_resumed_from_its_checkpoint_ends_with_the_uninterrupted_weights(tmp_path, classifier):
    """A run interrupted after its checkpoint at iteration 6 (its folder copied to a fresh run) and
    resumed there ends bit for bit where the uninterrupted run ended: model, optimiser, scheduler,
    prototypes, history; the sampler continues at step 6 and every micro-batch's seed is its own."""
    cfg = apply_overrides(RunConfig(), _TINY + [f"model.classifier={classifier}", "train.iters=8",
                                                "train.log_period=2", "train.checkpoint_period=3",
                                                "data.batch_size=4", "data.color_jitter=0.3"])
    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"
    result, model = train_cell(cfg, LocalContext(_CPU, whole))
    assert sorted(p.name for p in whole.iterdir()) == ["checkpoint_00000006", "checkpoint_00000008"]  # newest two
    assert (whole / "checkpoint_00000006" / "rng-rank0.pt").is_file()
    shutil.copytree(whole / "checkpoint_00000006", interrupted / "checkpoint_00000006")
    resumed, again = train_cell(cfg, LocalContext(_CPU, interrupted, resume=True))
    assert resumed.environment["engine"]["resumed_at"] == 6
    for name, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    assert resumed.history == result.history
    assert resumed.metrics["mIoU"] == result.metrics["mIoU"]
    final = checkpoint.read(checkpoint.latest(interrupted), 0)
    assert final["iteration"] == 8 and set(final) >= {"model", "optimizer", "scheduler", "scaler", "history"}


@pytest.mark.parametrize("classifier", ["softmax", "protoseg", "ssa", "ece"])
def test_bf16_training_is_finite_and_the_heads_similarity_maths_stay_float32(classifier):
    overrides = ["train.iters=3", "train.log_period=1", "train.precision=bf16", "train.lr=0.003"]
    cfg, model, batches = _setup(overrides, classifier)
    result = _trainer(cfg, model, batches).train()
    assert all(torch.isfinite(torch.tensor(row["loss/total"])) for row in result.history)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(next(batches)["image"], next(batches)["sem_seg"])
    if classifier == "softmax":  # a 1x1 conv: autocast runs it in bf16
        assert out.logits.dtype == torch.bfloat16
    else:
        assert out.logits.dtype == torch.float32
        assert all(loss.dtype == torch.float32 for loss in out.losses.values())


def test_periodic_evaluation_adds_validation_columns_to_the_history():
    cfg = apply_overrides(RunConfig(), _TINY + ["train.iters=6", "train.log_period=2", "train.eval_period=4",
                                                "data.batch_size=4", "data.eval_batch_size=50"])
    result, _ = train_cell(cfg, LocalContext(_CPU))
    rows = {row["iteration"]: row for row in result.history}
    assert sorted(rows) == [2, 4, 6]
    assert 0 <= rows[4]["val/mIoU"] <= 100 and "loss/total" in rows[4]  # the same row as the period's losses
    assert not any(k.startswith("val/") for k in {**rows[2], **rows[6]})  # the end is the cell's own evaluation


def test_sync_bn_is_resolved_per_layout_and_refused_on_the_cpu():
    assert resolve_sync_bn("auto", 2, torch.device("cuda")) and not resolve_sync_bn("auto", 2, _CPU)
    assert not resolve_sync_bn("auto", 1, torch.device("cuda")) and not resolve_sync_bn(False, 8, torch.device("cuda"))
    with pytest.raises(InputError, match="model.sync_bn=true: SyncBatchNorm needs CUDA and this cell runs on cpu"):
        resolve_sync_bn(True, 2, _CPU)


@pytest.mark.parametrize("interval, reported", [(0.0, [1, 2, 3, 4]), (3600.0, [4])])
def test_rows_are_reported_at_most_once_per_interval_and_always_at_the_end(interval, reported):
    cfg, model, batches = _setup(["train.iters=4", "train.log_period=1"])
    context = LocalContext(_CPU)
    trainer = Trainer(model, batches, cfg.train, _CPU)
    trainer.register_hooks([MetricsHook(context, 1, report_interval=interval)])
    result = trainer.train()
    assert [row["iteration"] for row in result.history] == [1, 2, 3, 4]  # the history keeps every period
    assert [row["iteration"] for row in context.reported] == reported
    rows = [row for report in context.reported for row in report["rows"]]  # every row reaches the driver once
    assert [row["iteration"] for row in rows] == [1, 2, 3, 4]
    assert all(row["time/iters_per_second"] > 0 for row in rows) and rows[-1]["time/eta_seconds"] == 0
