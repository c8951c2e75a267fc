"""The settings of one cell (``RunConfig`` and its sections), as dataclasses with their limits."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from harness.config.parse import bounded, from_dict, to_dict
from harness.errors import InputError


@dataclass
class ModelConfig:
    backbone: str = "resnet10t"
    neck: str = "mlp"
    classifier: str = "softmax"
    embed_dim: int = bounded(256, min=1)
    backbone_kwargs: dict = field(default_factory=dict)
    classifier_kwargs: dict = field(default_factory=dict)
    neck_kwargs: dict = field(default_factory=dict)  # the neck's options, and ``auxiliary: true|false``
    # SyncBatchNorm across a cell's workers: auto = when it has more than one worker on CUDA.
    sync_bn: bool | str = bounded("auto", choices=(True, False, "auto"))
    # Initialisation of the neck, auxiliary head and classifier: torch = PyTorch's defaults; mmseg =
    # MMSegmentation's (ConvModule convs Kaiming-normal fan_out, norms 1/0, final classifiers N(0, 0.01)).
    init: str = bounded("torch", choices=("torch", "mmseg"))


@dataclass
class PhotometricConfig:
    """MMSegmentation's ``PhotoMetricDistortion`` (``enabled``; off by default), with its settings:
    brightness + U(-``brightness_delta``, ``brightness_delta``), contrast and saturation times
    U(``contrast_range``), U(``saturation_range``), hue + U{-``hue_delta``, ..., ``hue_delta`` - 1}
    of OpenCV's 180 hues; each applied with probability 0.5."""

    enabled: bool = False
    brightness_delta: float = bounded(32.0, min=0, max=255)
    contrast_range: list[float] = bounded([0.5, 1.5], min=0, length=2)
    saturation_range: list[float] = bounded([0.5, 1.5], min=0, length=2)
    hue_delta: int = bounded(18, min=0, max=180)

    def check(self, section: str) -> None:
        for key in ("contrast_range", "saturation_range"):
            low, high = getattr(self, key)
            if low > high:
                raise InputError(f"{section}.{key}={[low, high]!r}; expected [low, high] with low <= high")


@dataclass
class DataConfig:
    """``dataset`` names a pair ``<dataset>_train`` / ``<dataset>_val`` in the catalog. Training
    augmentation is MMSegmentation's pipeline (``harness.data.AugmentConfig``): images rescaled so
    their short side is ``short_side`` (null: the crop's longer side), their long side at most
    ``max_long_side`` (null: no cap), both times a ratio of ``scale_range``, resized by mmcv's
    ``resize_backend`` (``pillow``: anti-aliased, what digits-sized images want; ``cv2``: MMSeg's
    default, which its configs run, 6x faster); a crop (``cat_max_ratio`` < 1: redrawn while
    one class fills that share of it); a flip with ``hflip_prob``; ``photometric`` distortion
    and/or segheads' ``color_jitter``; padding to the crop (labels ignored, pixels the mean colour).
    MMSeg's ADE20K pipeline is ``image_size: 512, max_long_side: 2048, scale_range: [0.5, 2.0],
    resize_backend: cv2, cat_max_ratio: 0.75, hflip_prob: 0.5, color_jitter: 0, photometric: {enabled: true}``; its
    Cityscapes pipeline rescales to ``short_side: 1024, max_long_side: 2048`` whatever the crop."""

    dataset: str = "digits_sem_seg"
    image_size: int | list[int] = bounded(48, min=16)  # the training crop: a square's side, or [h, w]
    batch_size: int = bounded(8, min=1)
    eval_batch_size: int = bounded(8, min=1)
    num_workers: int = bounded(2, min=0)
    scale_range: list[float] = bounded([0.8, 1.25], above=0, length=2)
    short_side: int | None = bounded(None, min=1)
    max_long_side: int | None = bounded(None, min=1)
    resize_backend: str = bounded("pillow", choices=("pillow", "cv2"))
    cat_max_ratio: float = bounded(1.0, above=0, max=1)
    hflip_prob: float = bounded(0.5, min=0, max=1)
    color_jitter: float = bounded(0.2, min=0, max=1)
    photometric: PhotometricConfig = field(default_factory=PhotometricConfig)

    def check(self, section: str) -> None:
        if isinstance(self.image_size, list) and len(self.image_size) != 2:
            raise InputError(f"{section}.image_size={self.image_size!r}: expected a side or [h, w]")
        if self.scale_range[0] > self.scale_range[1]:
            raise InputError(f"{section}.scale_range={self.scale_range!r}; expected [low, high] with low <= high")

    @property
    def crop_size(self) -> tuple[int, int]:
        """The training crop as (h, w)."""
        size = self.image_size
        return (size, size) if isinstance(size, int) else (size[0], size[1])


_MULTIPLIERS = ("lr_mult", "decay_mult")  # what a train.param_groups entry may set


@dataclass
class TrainConfig:
    """``iters`` optimiser steps of ``data.batch_size`` samples (the global batch, split over the
    cell's workers and ``accumulate`` micro-batches each); ``precision`` fp32 | bf16 | fp16
    (autocast; fp16 with a gradient scaler); every ``log_period`` steps the loss terms are read
    from the device once and reported, every ``checkpoint_period`` (0: at the end only) a
    checkpoint is written, every ``eval_period`` (0: at the end only) the model is evaluated."""

    iters: int = bounded(2000, min=1)
    optimizer: str = bounded("adamw", choices=("adamw", "sgd"))
    lr: float = bounded(3e-3, above=0)
    weight_decay: float = bounded(0.01, min=0)
    momentum: float = bounded(0.9, min=0, max=1)
    # The learning-rate schedule (``harness.solver.lr_at``): ``poly``, poly decay over the whole run
    # times a linear warm-up from ``warmup_ratio`` over ``warmup_iters``; ``mmseg``, MMEngine's
    # LinearLR(start_factor=warmup_ratio) over ``warmup_iters`` then PolyLR(eta_min=min_lr) over the
    # rest, as MMSegmentation's configs chain them. ``min_lr`` is the decay's floor in both.
    schedule: str = bounded("poly", choices=("poly", "mmseg"))
    warmup_iters: int = bounded(50, min=0)
    warmup_ratio: float = bounded(1e-3, min=0, max=1)
    poly_power: float = bounded(0.9, min=0)
    min_lr: float = bounded(0.0, min=0)
    grad_clip: float | None = bounded(None, above=0)
    seed: int = 0
    threads: int = bounded(0, min=0)
    log_period: int = bounded(20, min=1)
    checkpoint_period: int = bounded(0, min=0)
    eval_period: int = bounded(0, min=0)
    accumulate: int = bounded(1, min=1)
    precision: str = bounded("fp32", choices=("fp32", "bf16", "fp16"))
    # MMSegmentation's paramwise_cfg custom_keys: a substring of parameter names -> {lr_mult,
    # decay_mult}; a parameter takes the longest key it contains (1-d parameters: no decay
    # unless a key says otherwise; a multiplier a key leaves out keeps its default; "" is in every
    # name), e.g. {backbone: {lr_mult: 0.1}, norm: {decay_mult: 0}}.
    param_groups: dict = field(default_factory=dict)

    def check(self, section: str) -> None:
        for key, settings in self.param_groups.items():
            where = f"{section}.param_groups.{key}"
            if not isinstance(settings, dict) or not settings or set(settings) - set(_MULTIPLIERS):
                raise InputError(f"{where}: expected a mapping of {' and/or '.join(_MULTIPLIERS)}, got {settings!r}")
            for name, value in settings.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                    raise InputError(f"{where}.{name}={value!r}; expected a number >= 0")


@dataclass
class MeasureConfig:
    """Cost measurement of the trained model (``harness.measure``): FLOPs and parameters at
    ``image_size``; latency, throughput and peak memory for each of ``batch_sizes``
    (``warmup`` untimed then ``iters`` timed forwards). ``dtype`` float32|bfloat16|float16
    (autocast when not float32); threads are the run's ``train.threads``."""

    enabled: bool = True
    image_size: int = bounded(512, min=1)
    batch_sizes: list[int] = bounded([1], min=1)
    warmup: int = bounded(5, min=0)
    iters: int = bounded(20, min=1)
    dtype: str = bounded("float32", choices=("float32", "bfloat16", "float16"))
    channels_last: bool = False
    compile: bool = False


@dataclass
class EvalConfig:
    """How each validation image is predicted (``harness.evaluation.predict_logits``; MMSegmentation's
    test protocols). The image is resized so its short side is ``short_side`` (``null``: native
    size), capped so its long side stays within ``max_long_side`` (MMSeg's ``Resize(scale=(2048,
    512), keep_ratio=True)`` is short_side 512, max_long_side 2048); then, for each factor of
    ``scales`` (of that size) and each of {as is, flipped} when ``flip``, predicted ``whole`` or by
    ``slide`` windows of ``crop_size`` [h, w] every ``stride`` [h, w], logits averaged where
    windows overlap. Scores come back at the image's original size (bilinear); over several
    scales x flips they are softmax probabilities averaged (MMSeg's ``SegTTAModel``).

    ``extra`` maps a name to more protocols, each these keys over this one's, evaluated at the end
    of training and logged as ``<metric>/<name>`` (``mIoU/ms_flip``)."""

    mode: str = bounded("whole", choices=("whole", "slide"))
    short_side: int | None = bounded(None, min=1)
    max_long_side: int | None = bounded(None, min=1)
    resize_backend: str = bounded("pillow", choices=("pillow", "cv2"))
    crop_size: list[int] | None = bounded(None, min=1, length=2)
    stride: list[int] | None = bounded(None, min=1, length=2)
    scales: list[float] = bounded([1.0], above=0)
    flip: bool = False
    extra: dict = field(default_factory=dict)

    def check(self, section: str) -> None:
        """``InputError`` naming the key when slide mode lacks its window, or an ``extra`` protocol is not one."""
        if self.mode == "slide" and (self.crop_size is None or self.stride is None):
            raise InputError(f"{section}.mode=slide: expected {section}.crop_size and {section}.stride ([h, w] each)")
        for name, update in self.extra.items():
            if not isinstance(update, dict) or "extra" in update:
                raise InputError(f"{section}.extra.{name}: expected a mapping of {section} keys (no nested extra)")
            self.protocol(name)

    def protocol(self, name: str) -> EvalConfig:
        """The ``extra`` protocol ``name``: its keys over this protocol's."""
        base = {k: v for k, v in to_dict(self).items() if k != "extra"}
        return from_dict(EvalConfig, {**base, **self.extra[name]}, f"eval.extra.{name}")

    def describe(self) -> str:
        """One line: the protocol as a reader of a table would name it."""
        size = "native size" if self.short_side is None else f"short side {self.short_side}" + (
            f" (long <= {self.max_long_side})" if self.max_long_side else "")
        window = "whole" if self.mode == "whole" else f"slide {self.crop_size[0]}x{self.crop_size[1]} stride {self.stride[0]}x{self.stride[1]}"
        views = "" if self.scales == [1.0] else f", scales {'/'.join(f'{s:g}' for s in self.scales)}"
        return f"{window}, {size}{views}{', flip' if self.flip else ''}"

    def describe_all(self) -> str:
        """This protocol and each ``extra`` one by name, as the dry run and a cell's log list them."""
        return "; ".join([self.describe()] + [f"{name}: {self.protocol(name).describe()}" for name in self.extra])


@dataclass
class TrunkConfig:
    """A trained backbone and neck every cell starts from (head-only grids): ``run`` names a logged
    cell whose ``weights.pt`` holds it (an MLflow run id, or ``<experiment>/<run name>``, the newest
    FINISHED run of that name, e.g. ``quickstart/softmax@resnet10t-s0``), ``checkpoint`` a file
    (a state dict such as ``weights.pt``, or a training checkpoint's ``state.pt`` or its folder).
    ``train: false`` freezes the trunk (no gradients, BatchNorm in eval mode) so only the head
    trains; ``true`` only starts from it. ``digest`` pins the weights (the first 16 hex of their
    file's SHA-256): a grid fills it in when it resolves the trunk (``harness.tracking.resolve_trunks``),
    so a cell's ``config_hash`` changes with its trunk's weights, not with where they are kept."""

    run: str | None = None
    checkpoint: str | None = None
    train: bool = False
    digest: str | None = None

    @property
    def enabled(self) -> bool:
        return self.run is not None or self.checkpoint is not None

    @property
    def frozen(self) -> bool:
        """Whether the cell trains its head only, on this trunk's fixed features."""
        return self.enabled and not self.train

    def check(self, section: str) -> None:
        if not self.enabled and (self.train or self.digest is not None):
            raise InputError(f"{section}: expected {section}.run (a logged cell) or {section}.checkpoint (a file)")

    def describe(self) -> str:
        """The trunk as a log line names it: its source and digest."""
        source = self.run if self.run is not None else self.checkpoint
        return f"trunk {source}" + (f" [{self.digest}]" if self.digest else "") + (" (fine-tuned)" if self.train else " (frozen)")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    device: str = "auto"
    output_dir: str = "outputs"
    tracking_uri: str | None = None
    experiment: str = "segheads"
    # The plugins that provide this cell's classifier, neck, backbone or dataset: module ->
    # "<distribution> <version> <digest>", filled in when the cell is planned (``harness.plugins``).
    plugins: dict = field(default_factory=dict)
