"""``check_classifier``: the classifier contract (docs/architecture.md, "Classifiers") run on small
random inputs, each clause a named check, as scikit-learn's ``check_estimator`` does for estimators.

The inputs: ``Features`` of a batch of 2 images of 64 x 96 pixels (so a head that swaps height
and width is seen), ``pixel`` at stride 4 and a 4-level ``pyramid`` (strides 4-32), all
``in_channels`` wide, standard normal; targets with every class, a block of ignored pixels.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from backbones.features import Features
from classifiers.base import NORM_LAYERS, ClassifierOutput, PixelClassifier
from harness import metric_keys as keys
from harness.errors import InputError, one_line
from harness.measure.flops import count_flops

PASSED, FAILED, NOT_APPLICABLE = "passed", "FAILED", "n/a"
IMAGE_SIZE = (64, 96)
STRIDES = (4, 8, 16, 32)
_OTHER_IGNORE = 250  # the second ignore value the ignore check labels with
_TOLERANCE = 1e-5


class CheckFailed(AssertionError):
    """One clause of the contract does not hold: the message says how."""


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    status: str  # PASSED, FAILED or NOT_APPLICABLE
    detail: str = ""


@dataclass
class HeadCheck:
    """What ``check_classifier`` found: one outcome per check, in the order they ran."""

    head: str
    outcomes: list[CheckOutcome] = field(default_factory=list)

    @property
    def failures(self) -> list[CheckOutcome]:
        return [o for o in self.outcomes if o.status == FAILED]

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        width = max(len(o.name) for o in self.outcomes)
        lines = [f"{self.head}: {len(self.outcomes) - len(self.failures)} of {len(self.outcomes)} checks hold"
                 + ("" if self.ok else f", {len(self.failures)} FAILED")]
        lines += [f"  {o.status:<7} {o.name:<{width}}  {o.detail}".rstrip() for o in self.outcomes]
        return "\n".join(lines)

    def raise_on_failure(self) -> None:
        """``AssertionError`` listing every failed check (for a head's own test suite)."""
        if not self.ok:
            raise AssertionError(str(self))


HeadFactory = Callable[..., PixelClassifier]


def check_classifier(factory: HeadFactory, num_classes: int = 5, in_channels: int = 32, seed: int = 0,
                     name: str | None = None) -> HeadCheck:
    """Run every check of the classifier contract on the head ``factory(num_classes=...,
    in_channels=..., ignore_index=...)`` builds (a ``PixelClassifier`` subclass, or any callable
    taking those keywords, e.g. ``functools.partial(build_classifier, "protoseg")``); a check that
    raises fails with the error's first line. Returns the outcomes; raises only the ``InputError``
    of a factory refusing its settings (a bad hyper-parameter)."""
    kit = _Kit(factory, num_classes, in_channels, seed)
    report = HeadCheck(name or getattr(factory, "__qualname__", None) or repr(factory))
    try:
        kit.head = kit.build()
    except InputError:  # a bad hyper-parameter is the caller's input, not the head's contract
        raise
    except Exception as exc:
        report.outcomes.append(CheckOutcome("builds", FAILED, one_line(exc)))
        return report
    report.outcomes.append(CheckOutcome("builds", PASSED, type(kit.head).__name__))
    for check_name, check in _CHECKS:
        try:
            detail = check(kit)
            status = NOT_APPLICABLE if detail is NOT_APPLICABLE else PASSED
            report.outcomes.append(CheckOutcome(check_name, status, "" if detail in (None, NOT_APPLICABLE) else detail))
        except Exception as exc:
            report.outcomes.append(CheckOutcome(check_name, FAILED, str(exc).strip().splitlines()[0]
                                                if isinstance(exc, CheckFailed) else one_line(exc)))
    return report


class _Kit:
    """The factory, the inputs, and helpers shared by the checks."""

    def __init__(self, factory: HeadFactory, num_classes: int, in_channels: int, seed: int) -> None:
        self.factory, self.num_classes, self.in_channels, self.seed = factory, num_classes, in_channels, seed

    def build(self, seed: int | None = None, ignore_index: int = 255) -> PixelClassifier:
        """A head from the factory, torch's generator seeded with ``seed`` (default the kit's) first."""
        torch.manual_seed(self.seed if seed is None else seed)
        head = self.factory(num_classes=self.num_classes, in_channels=self.in_channels, ignore_index=ignore_index)
        if not isinstance(head, PixelClassifier):
            raise CheckFailed(f"the factory returned {type(head).__name__}, not a PixelClassifier")
        return head

    def features(self, batch: int = 2, seed: int = 1) -> Features:
        generator = torch.Generator().manual_seed(seed)
        height, width = IMAGE_SIZE
        maps = [torch.randn(batch, self.in_channels, height // s, width // s, generator=generator).requires_grad_()
                for s in STRIDES]  # leaves, as a neck's outputs carry gradients: a head without parameters still trains
        return Features(maps[0], maps, IMAGE_SIZE)

    def targets(self, batch: int = 2, ignore: int = 255, classes: range | None = None, seed: int = 2) -> Tensor:
        """Labels in ``classes`` (default all) in 8 x 8 blocks, every class present, a block of ``ignore``."""
        generator = torch.Generator().manual_seed(seed)
        classes = classes if classes is not None else range(self.num_classes)
        height, width = IMAGE_SIZE
        blocks = torch.randint(len(classes), (batch, height // 8, width // 8), generator=generator)
        blocks.view(batch, -1)[:, : len(classes)] = torch.arange(len(classes))
        labels = (blocks + classes.start).repeat_interleave(8, 1).repeat_interleave(8, 2)
        labels[:, 8:24, 16:40] = ignore
        return labels

    def infer(self, head: PixelClassifier, features: Features | None = None) -> ClassifierOutput:
        head.eval()
        with torch.no_grad():
            return head(features if features is not None else self.features())

    def train_losses(self, head: PixelClassifier, targets: Tensor | None = None, features: Features | None = None,
                     seed: int | None = 3) -> dict[str, Tensor]:
        """``head``'s training losses, torch's generator seeded with ``seed`` first (``None``: as it is)."""
        head.train()
        if seed is not None:
            torch.manual_seed(seed)
        output = head(features if features is not None else self.features(),
                      targets if targets is not None else self.targets())
        return output.losses

    def trained(self) -> PixelClassifier:
        """A copy of the head after two training steps (forward, backward, ``after_optimizer_step``),
        so its state has moved from its initial values."""
        head = copy.deepcopy(self.head)
        learnable = head.learnable_parameters()
        optimizer = torch.optim.SGD(learnable, lr=0.1) if learnable else None
        for step in range(2):
            losses = self.train_losses(head, seed=10 + step)
            total = sum(losses.values())
            if optimizer is not None and total.requires_grad:
                total.backward()
                optimizer.step()
                optimizer.zero_grad()
            head.after_optimizer_step()
        return head.eval()


def _close(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), atol=_TOLERANCE, rtol=_TOLERANCE))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def _check_logits(kit: _Kit) -> str:
    output = kit.infer(kit.head)
    _require(isinstance(output, ClassifierOutput), f"forward returned {type(output).__name__}, not ClassifierOutput")
    logits = output.logits
    _require(isinstance(logits, Tensor) and logits.dim() == 4, f"logits {getattr(logits, 'shape', logits)}; "
             "expected a [B, C, h, w] tensor")
    batch, classes, h, w = logits.shape
    _require((batch, classes) == (2, kit.num_classes), f"logits {tuple(logits.shape)}; expected [2, {kit.num_classes}, h, w]")
    _require(h * IMAGE_SIZE[1] == w * IMAGE_SIZE[0], f"logits {h}x{w} for a {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} image; "
             "expected the image's aspect (height first)")
    _require(logits.dtype == torch.float32, f"logits {logits.dtype} from float32 features; expected float32")
    _require(bool(torch.isfinite(logits).all()), "logits not finite")
    return f"[2, {kit.num_classes}, {h}, {w}] float32"


def _check_losses(kit: _Kit) -> str:
    head = copy.deepcopy(kit.head)
    features = kit.features()
    losses = kit.train_losses(head, features=features)
    _require(isinstance(losses, dict) and losses, "forward with targets returned no losses; expected every term by name")
    for name, value in losses.items():
        _require(isinstance(name, str) and name != "", f"loss name {name!r}; expected a non-empty string")
        _require(isinstance(value, Tensor) and value.dim() == 0, f"loss {name!r} is {getattr(value, 'shape', value)}; "
                 "expected a scalar tensor")
        _require(value.dtype.is_floating_point and bool(torch.isfinite(value)), f"loss {name!r} = {value}; expected finite")
    total = sum(losses.values())
    _require(total.requires_grad, "no loss carries a gradient to the head's parameters or its features")
    total.backward()
    bad = [n for n, p in head.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    bad += [f"features.{n}" for n, t in (("pixel", features.pixel), *((f"pyramid[{i}]", m) for i, m in
                                          enumerate(features.pyramid))) if t.grad is not None and not torch.isfinite(t.grad).all()]
    _require(not bad, f"non-finite gradients in {', '.join(bad)}")
    return ", ".join(sorted(losses))


def _check_gradients(kit: _Kit) -> str:
    head = copy.deepcopy(kit.head)
    sum(kit.train_losses(head).values()).backward()  # features require grad: a loss always has one
    names = {id(p): n for n, p in head.named_parameters()}
    missing = [names[id(p)] for p in head.learnable_parameters() if p.grad is None or not p.grad.any()]
    _require(not missing, f"learnable parameters no loss reaches: {', '.join(missing[:5])}"
             + (f" (+{len(missing) - 5})" if len(missing) > 5 else ""))
    return f"{len(head.learnable_parameters())} tensors"


def _check_ignored(kit: _Kit) -> str:
    """The losses read labels only where they are not ``ignore_index``: the same head built with
    another ignore value, on the same targets labelled with it, gives the same losses; an image
    wholly ignored gives finite ones."""
    other = kit.build(ignore_index=_OTHER_IGNORE)
    other.load_state_dict(kit.head.state_dict())
    mine = kit.train_losses(copy.deepcopy(kit.head), kit.targets(ignore=255))
    try:
        theirs = kit.train_losses(other, kit.targets(ignore=_OTHER_IGNORE))
    except Exception as exc:
        raise CheckFailed(f"with ignore_index={_OTHER_IGNORE}, pixels labelled {_OTHER_IGNORE} raise "
                          f"{one_line(exc).rstrip('.')} (ignore_index is not honoured)") from None
    _require(set(mine) == set(theirs), f"loss terms {sorted(mine)} with ignore 255, {sorted(theirs)} with "
             f"{_OTHER_IGNORE}")
    differ = [n for n in mine if not _close(mine[n].detach(), theirs[n].detach())]
    _require(not differ, f"loss(es) {', '.join(differ)} change when ignored pixels are labelled {_OTHER_IGNORE} "
             f"instead of 255 with ignore_index={_OTHER_IGNORE}: ignore_index is not honoured")
    empty = kit.train_losses(copy.deepcopy(kit.head), torch.full((2, *IMAGE_SIZE), 255))
    bad = [n for n, v in empty.items() if not torch.isfinite(v)]
    _require(not bad, f"loss(es) {', '.join(bad)} not finite on a batch whose pixels are all ignored")
    return None


def _check_inference(kit: _Kit) -> str:
    """Without targets: no losses, no call into ``training_only_modules()``, no state update."""
    head = copy.deepcopy(kit.head)
    called: list[str] = []
    modules = head.training_only_modules()
    handles = [module.register_forward_hook(lambda *_, name=name: called.append(name)) for name, module in modules.items()]
    before = {k: v.clone() for k, v in head.nonlearnable_state().items()}
    try:
        output = kit.infer(head)
    finally:
        for handle in handles:
            handle.remove()
    _require(not output.losses, f"losses {sorted(output.losses)} without targets; expected logits only")
    _require(not called, f"training-only module(s) {', '.join(sorted(set(called)))} ran without targets")
    after = head.nonlearnable_state()
    moved = [k for k in before if k not in after or not torch.equal(before[k], after[k])]
    _require(not moved, f"non-learnable state {', '.join(moved)} changed at inference")
    return f"{len(modules)} training-only module(s) idle" if modules else None


def _check_accounting(kit: _Kit) -> str:
    """``learnable_parameters``, ``nonlearnable_state``, normalisation statistics and frozen
    parameters account for every tensor of the state dict, once each; ``training_only_modules``
    are the head's own sub-modules."""
    head = kit.head
    names = {id(p): n for n, p in head.named_parameters()}
    learnable = head.learnable_parameters()
    stray = [p for p in learnable if id(p) not in names]
    _require(not stray, f"learnable_parameters() holds {len(stray)} tensor(s) that are not the head's parameters")
    _require(len({id(p) for p in learnable}) == len(learnable), "learnable_parameters() lists a parameter twice")
    unlisted = sorted(n for n, p in head.named_parameters() if p.requires_grad and id(p) not in {id(q) for q in learnable})
    _require(not unlisted, f"parameters with requires_grad missing from learnable_parameters(): {', '.join(unlisted)}")
    state = head.state_dict(keep_vars=True)
    nonlearnable = head.nonlearnable_state()
    as_parameters = [k for k, v in nonlearnable.items() if isinstance(v, nn.Parameter)]
    _require(not as_parameters, f"nonlearnable_state() holds nn.Parameter(s) {', '.join(as_parameters)}; expected buffers")
    unknown = [k for k, v in nonlearnable.items() if k not in state or state[k] is not v]
    _require(not unknown, f"nonlearnable_state() names {', '.join(unknown)}, not persistent buffers of the head")
    norm_buffers = {f"{prefix}.{name}" if prefix else name for prefix, module in head.named_modules()
                    if isinstance(module, NORM_LAYERS) for name in module._buffers}
    accounted = set(names.values()) | set(nonlearnable) | norm_buffers
    missing = sorted(set(state) - accounted)
    _require(not missing, f"state_dict tensors in no account: {', '.join(missing)} (buffers belong in nonlearnable_state())")
    modules = {id(m) for m in head.modules()}
    foreign = [n for n, m in head.training_only_modules().items() if id(m) not in modules or m is head]
    _require(not foreign, f"training_only_modules() {', '.join(foreign)} are not sub-modules of the head")
    frozen = sum(p.numel() for p in head.parameters() if not p.requires_grad)
    return (f"{sum(p.numel() for p in learnable):,} learnable, {sum(v.numel() for v in nonlearnable.values()):,} "
            f"non-learnable" + (f", {frozen:,} frozen" if frozen else ""))


def _check_round_trip(kit: _Kit) -> str:
    """A trained head's state dict, loaded into a head built with another seed, gives its logits."""
    trained = kit.trained()
    fresh = kit.build(seed=kit.seed + 1)
    fresh.load_state_dict(trained.state_dict())
    _require(_close(kit.infer(trained).logits, kit.infer(fresh).logits),
             "logits differ after a state-dict round trip: state kept outside parameters and persistent buffers")
    return None


def _check_determinism(kit: _Kit) -> str:
    twin = kit.build()
    _require(_close(kit.infer(kit.head).logits, kit.infer(twin).logits), "two heads built with the same seed give "
             "different logits")
    _require(_close(kit.infer(kit.head).logits, kit.infer(kit.head).logits), "the same head gives different logits twice")
    first = kit.train_losses(copy.deepcopy(kit.head))
    second = kit.train_losses(copy.deepcopy(kit.head))
    differ = [n for n in first if n not in second or not _close(first[n].detach(), second[n].detach())]
    _require(not differ, f"loss(es) {', '.join(differ)} differ between two runs with the same seed")
    return None


def _check_bf16(kit: _Kit) -> str:
    head = copy.deepcopy(kit.head)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = kit.infer(head).logits
        losses = kit.train_losses(head)
    _require(bool(torch.isfinite(logits.float()).all()), "logits not finite under bf16 autocast")
    bad = [n for n, v in losses.items() if not torch.isfinite(v.float())]
    _require(not bad, f"loss(es) {', '.join(bad)} not finite under bf16 autocast")
    return None


def _check_accumulation(kit: _Kit) -> str:
    """A head that declares ``ACCUMULATES_STATE``: two micro-batches (disjoint classes, so
    per-class batch statistics see the same pixels either way; one random stream across them),
    then ``after_optimizer_step``, leave the same non-learnable state as one batch of both."""
    if not type(kit.head).ACCUMULATES_STATE:
        return NOT_APPLICABLE
    half = kit.num_classes // 2
    features = kit.features(batch=4)
    targets = torch.cat([kit.targets(classes=range(0, half)), kit.targets(classes=range(half, kit.num_classes))])
    whole, split = copy.deepcopy(kit.head), copy.deepcopy(kit.head)
    kit.train_losses(whole, targets, features)
    whole.after_optimizer_step()
    for rows, seed in ((slice(0, 2), 3), (slice(2, 4), None)):  # one random stream, as the whole batch draws
        kit.train_losses(split, targets[rows], Features(features.pixel[rows], [m[rows] for m in features.pyramid],
                                                       IMAGE_SIZE), seed)
    split.after_optimizer_step()
    initial, a, b = kit.head.nonlearnable_state(), whole.nonlearnable_state(), split.nonlearnable_state()
    differ = [k for k in a if not _close(a[k], b[k])]
    _require(not differ, f"non-learnable state {', '.join(differ)} differs between two micro-batches and one batch")
    _require(any(not torch.equal(initial[k], a[k]) for k in a), "after_optimizer_step() left the state as it was")
    return f"{', '.join(a)} equal"


class _HeadProbe(nn.Module):
    """The head as ``count_flops`` counts a model's children: ``classifier`` on fixed features."""

    def __init__(self, head: PixelClassifier, features: Features) -> None:
        super().__init__()
        self.classifier, self._features = head, features

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self._features).logits


def _check_flops(kit: _Kit) -> str:
    features = kit.features(batch=1)
    flops = count_flops(_HeadProbe(copy.deepcopy(kit.head), features), torch.zeros(1, 3, *IMAGE_SIZE))
    counted = flops[keys.gflops("head")] if keys.gflops("head") in flops else 0.0
    _require(counted > 0, "harness.measure counts no FLOPs in the head's forward")
    return f"{counted * 1e3:.3f} MFLOPs at {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}"


_CHECKS: list[tuple[str, Callable[[_Kit], str | None]]] = [
    ("logits_shape_and_dtype", _check_logits),
    ("losses_named_finite_scalar", _check_losses),
    ("gradients_reach_learnable", _check_gradients),
    ("ignored_pixels_change_nothing", _check_ignored),
    ("no_training_work_at_inference", _check_inference),
    ("parameter_accounting", _check_accounting),
    ("state_dict_round_trip", _check_round_trip),
    ("same_seed_same_logits", _check_determinism),
    ("bf16_autocast_finite", _check_bf16),
    ("micro_batches_accumulate", _check_accumulation),
    ("flops_countable", _check_flops),
]
CHECK_NAMES = ("builds", *(name for name, _ in _CHECKS))

