"""The head kit (``harness.testing.check_classifier``): every built-in head keeps the contract under
each preset, and each check fails on a head that breaks its clause."""

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from classifiers import ClassifierOutput, PixelClassifier, build_classifier, list_classifiers
from classifiers.registry import CLASSIFIERS
from harness.cli import main
from harness.errors import InputError
from harness.testing import CHECK_NAMES, FAILED, NOT_APPLICABLE, PASSED, check_classifier

_HEADS = [(name, preset) for name in list_classifiers()
          for preset in (CLASSIFIERS.get(name).PRESETS or {None: None})]


@pytest.mark.parametrize(("name", "preset"), _HEADS, ids=[f"{n}-{p}" if p else n for n, p in _HEADS])
def test_every_builtin_head_keeps_the_contract(name, preset):
    factory = functools.partial(build_classifier, name, **({"preset": preset} if preset else {}))
    report = check_classifier(factory, name=name)
    report.raise_on_failure()
    assert [o.name for o in report.outcomes] == list(CHECK_NAMES)
    accumulation = next(o for o in report.outcomes if o.name == "micro_batches_accumulate")
    # ProtoSeg gathers its prototype update over the step's micro-batches: the check applies, and holds.
    assert accumulation.status == (PASSED if name == "protoseg" else NOT_APPLICABLE)


class _Linear(PixelClassifier):
    """A sound head (1x1 conv, CE) each broken head below changes in one way."""

    def __init__(self, num_classes, in_channels, ignore_index=255):
        super().__init__(num_classes, in_channels, ignore_index)
        self.projection = nn.Conv2d(in_channels, num_classes, 1)

    def logits(self, features):
        return self.projection(features.pixel)

    def forward(self, features, targets=None):
        logits = self.logits(features)
        return ClassifierOutput(logits, {} if targets is None else {"ce": self.cross_entropy(logits, targets)})


class _PixelLoss(_Linear):
    def forward(self, features, targets=None):
        output = super().forward(features, targets)
        if targets is not None:
            output.losses["ce"] = F.cross_entropy(output.logits, self.labels_at(targets, output.logits.shape[-2:]),
                                                  ignore_index=self.ignore_index, reduction="none")
        return output


class _HiddenBuffer(_Linear):
    def __init__(self, num_classes, in_channels, ignore_index=255):
        super().__init__(num_classes, in_channels, ignore_index)
        self.register_buffer("bias_memory", torch.zeros(num_classes))

    def nonlearnable_state(self):
        return {}


class _NoisyInference(_Linear):
    def logits(self, features):
        return super().logits(features) + torch.randn(1)


class _FloatSixteen(_Linear):
    def logits(self, features):
        logits = super().logits(features)
        return (logits.half() * 1e5).float() if torch.is_autocast_enabled("cpu") else logits


class _LastMicroBatchOnly(_Linear):
    ACCUMULATES_STATE = True

    def __init__(self, num_classes, in_channels, ignore_index=255):
        super().__init__(num_classes, in_channels, ignore_index)
        self.register_buffer("centres", torch.zeros(num_classes, in_channels))
        self._pending = None

    def forward(self, features, targets=None):
        output = super().forward(features, targets)
        if targets is not None:
            labels = self.labels_at(targets, features.pixel.shape[-2:])
            onehot, valid = self.one_hot(labels, features.pixel.dtype)
            self._pending = torch.einsum("bchw,bdhw->cd", onehot, features.pixel.detach())  # replaces, not adds
        return output

    def after_optimizer_step(self):
        if self._pending is not None:
            self.centres = self.centres + self._pending
            self._pending = None


class _NoFlops(_Linear):
    def logits(self, features):
        return features.pixel[:, : self.num_classes] * self.projection.bias[None, :, None, None]


@pytest.mark.parametrize(("head", "failing", "says"), [
    (_PixelLoss, "losses_named_finite_scalar", "loss 'ce' is torch.Size([2, 16, 24]); expected a scalar tensor"),
    (_HiddenBuffer, "parameter_accounting", "state_dict tensors in no account: bias_memory"),
    (_NoisyInference, "same_seed_same_logits", "different logits"),
    (_FloatSixteen, "bf16_autocast_finite", "logits not finite under bf16 autocast"),
    (_LastMicroBatchOnly, "micro_batches_accumulate", "non-learnable state centres differs"),
    (_NoFlops, "flops_countable", "counts no FLOPs"),
])
def test_each_check_fails_on_the_head_that_breaks_it(head, failing, says):
    assert check_classifier(_Linear).ok
    report = check_classifier(head)
    failure = next(o for o in report.outcomes if o.name == failing)
    assert failure.status == FAILED and says in failure.detail, str(report)
    assert f"FAILED  {failing}" in str(report)


def test_a_factory_that_cannot_be_built_fails_the_build_and_nothing_else_runs():
    def factory(num_classes, in_channels, ignore_index):
        raise RuntimeError("no weights here")

    report = check_classifier(factory)
    assert [(o.name, o.status, o.detail) for o in report.outcomes] == [
        ("builds", FAILED, "RuntimeError: no weights here")]
    with pytest.raises(AssertionError, match="builds  RuntimeError: no weights here"):
        report.raise_on_failure()


def test_check_head_takes_a_registered_name_or_module_name_and_a_bad_setting_is_input(capsys):
    assert main(["check-head", "protoseg", "--set", "preset=paper", "num_prototypes=3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("protoseg: 12 of 12 checks hold") and "parameter_accounting           0 learnable, 480 non-learnable" in out
    assert main(["check-head", "classifiers.softmax:SoftmaxClassifier"]) == 0
    assert main(["check-head", "protoseg", "--set", "bogus=1"]) == 2
    assert "classifier 'protoseg': unknown hyper-parameter(s) bogus" in capsys.readouterr().err
    assert main(["check-head", "classifiers.softmax:Nothing"]) == 2
    assert "module classifiers.softmax has no attribute 'Nothing'" in capsys.readouterr().err
    with pytest.raises(InputError):
        check_classifier(functools.partial(build_classifier, "softmax", bogus=1))
