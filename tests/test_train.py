import pytest
import torch

from classifiers import ClassifierOutput, PixelClassifier, register_classifier
from harness.config import RunConfig, TrainConfig, apply_overrides
from harness.data import AugmentConfig, DatasetCatalog, SemSegMapper, build_train_loader
from harness.run import build_segmentor, seed_everything
from harness.train import CHECKPOINT_NAME, NonFiniteLossError, lr_factor, train

_TINY = ["model.backbone=test_convnext", "model.embed_dim=32", "data.image_size=48", "train.warmup_iters=5"]


def _setup(overrides, classifier="softmax"):
    cfg = apply_overrides(RunConfig(), _TINY + [f"model.classifier={classifier}"] + overrides)
    seed_everything(cfg.train.seed)
    torch.set_num_threads(2)
    model = build_segmentor(cfg, 11, 255)
    records = DatasetCatalog.get("digits_sem_seg_train")[:64]
    mapper = SemSegMapper(11, 255, AugmentConfig(crop_size=48, hflip_prob=0.0))
    return cfg, model, build_train_loader(records, mapper, 8, 0, seed=0)


@pytest.mark.parametrize("classifier", ["softmax", "query"])
def test_short_real_training_lowers_the_loss(classifier):
    cfg, model, batches = _setup(["train.iters=60", "train.log_period=10", "train.lr=0.003"], classifier)
    result = train(model, batches, cfg.train, torch.device("cpu"))
    curve = [row["loss/total"] for row in result.history]
    assert len(curve) == 6 and result.history[-1]["iteration"] == 60
    assert curve[-1] < 0.7 * curve[0]
    assert {"loss/ce", "loss/total", "lr"} <= set(result.history[0])


def test_checkpoint_resume_continues_where_it_stopped(tmp_path):
    cfg, model, batches = _setup(["train.iters=4", "train.log_period=2"])
    train(model, batches, cfg.train, torch.device("cpu"), checkpoint_dir=tmp_path)
    saved = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert saved["iteration"] == 4
    longer = apply_overrides(cfg, ["train.iters=8"]).train
    _, fresh_model, fresh_batches = _setup(["train.iters=8", "train.log_period=2"])
    resumed = train(fresh_model, fresh_batches, longer, torch.device("cpu"), checkpoint_dir=tmp_path, resume=True)
    assert resumed.iterations == 4
    assert [row["iteration"] for row in resumed.history] == [2, 4, 6, 8]
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["iteration"] == 8


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


def test_non_finite_loss_stops_at_its_iteration():
    cfg, model, batches = _setup(["train.iters=10"], classifier="test_nan_after_two")
    with pytest.raises(NonFiniteLossError, match="iteration 2") as info:
        train(model, batches, cfg.train, torch.device("cpu"))
    assert info.value.iteration == 2


def test_lr_schedule_warms_up_then_decays_to_zero():
    cfg = TrainConfig(iters=100, warmup_iters=10, poly_power=1.0)
    factors = [lr_factor(i, cfg) for i in range(101)]
    assert factors[0] < 0.01 and factors[10] == pytest.approx(0.9)
    assert all(a < b for a, b in zip(factors[:10], factors[1:10]))
    assert factors[-1] == 0.0 and factors[50] == pytest.approx(0.5)
