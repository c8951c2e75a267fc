"""Cost measurement of a model (docs/architecture.md, "Measurement"): parameters, FLOPs, latency,
throughput, peak memory and efficiency against the machine's own matmul throughput.

Units and methods, stated once:
- ``gflops`` = 2 x ``gmacs`` (one multiply-accumulate = 2 FLOPs), per image at the
  given resolution, counted by ``torch.utils.flop_counter`` on the inference forward:
  convolutions, linear layers and every matmul (attention's QK^T and AV included,
  fused SDPA too); element-wise work (activations, norms, softmax, resizing) and bias
  additions are not counted, as in fvcore and timm's published GMACs.
- Latency: the model alone (``predict`` where the model has it, else ``forward``): one
  whole-image forward of a square ``measure.image_size`` batch, not the cell's test protocol
  (``eval``: resize, windows, scales x flips multiply it; the record's ``protocol`` says so), on
  inputs already on the device, in inference mode, after warm-up; every iteration is
  synchronised (CUDA events on GPU, ``perf_counter`` on CPU) and CPU threads are pinned.
- Peak memory: on GPU the CUDA allocator's peak over the timed loop minus what was
  allocated before it; on CPU the peak resident set size over the timed loop minus the
  resident size before it (Linux ``/proc/self/clear_refs`` resets the peak).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import functools
import os
import platform
import statistics
import time
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from classifiers.base import PixelClassifier
from harness.config import MeasureConfig, check_fields
from harness.errors import is_out_of_memory

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Metrics only a measurement makes (a re-measurement replaces them); parameter counts come with training too.
MEASUREMENT_PREFIXES = ("gflops/", "gmacs/", "latency/", "throughput/", "memory/", "efficiency/", "oom/")
TIMED_PROTOCOL = "whole image, one forward at measure.image_size (not the eval protocol)"  # what latency times
_PART_NAMES = {"classifier": "head"}  # a Segmentor's children, named as in the parameter counts
_PROC_STATUS = "/proc/self/status"


def _numel(tensors: Iterable[Tensor]) -> int:
    return sum(t.numel() for t in tensors)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts of a ``Segmentor``: total, backbone, neck, head, the head split into
    inference and training-only parts, the auxiliary head (training-only), all training-only
    parts together, what inference runs (``params/inference`` = total - training-only) and
    the head's non-learnable state (elements). Any other module: ``params/total`` only."""
    if not isinstance(getattr(model, "classifier", None), PixelClassifier):
        return {"params/total": _numel(model.parameters())}
    head = model.classifier
    training_only = {id(p): p for m in head.training_only_modules().values() for p in m.parameters()}
    head_total = _numel(head.parameters())
    training_only_total = _numel(training_only.values())
    auxiliary = _numel(model.auxiliary.parameters()) if getattr(model, "auxiliary", None) is not None else 0
    total = _numel(model.parameters())
    return {
        "params/total": total,
        "params/inference": total - training_only_total - auxiliary,
        "params/training_only": training_only_total + auxiliary,
        "params/auxiliary": auxiliary,
        "params/backbone": _numel(model.backbone.parameters()),
        "params/neck": _numel(model.neck.parameters()),
        "params/head": head_total,
        "params/head_inference": head_total - training_only_total,
        "params/head_training_only": training_only_total,
        "params/head_nonlearnable": _numel(head.nonlearnable_state().values()),
    }


# Matrix products between activations (attention maps, pixel-to-class similarities), as
# opposed to Linear and Conv layers: counters that hook layers only (mmcv's
# get_model_complexity_info, which the papers' tables used) skip them.
_PRODUCT_OPS = ("aten.bmm", "aten.baddbmm", "aten._scaled_dot_product")


def count_flops(model: nn.Module, images: Tensor) -> dict[str, float]:
    """Inference FLOPs of ``model(images)`` per image: ``gflops/total`` and ``gmacs/total``,
    and the same for each direct child module that does any (a ``Segmentor``'s
    ``backbone``, ``neck`` and ``head``; work outside its children is in the total only);
    ``*/matmul``, the batched products between activations (attention), and
    ``*/layers_only``, the total without them, what layer-hook counters report."""
    was_training = model.training
    # Parameters frozen while counting: the counter's module tracker would hook every
    # parameter that one module passes to another as an input.
    requires_grad = {p: p.requires_grad for p in model.parameters()}
    model.eval().requires_grad_(False)
    try:
        with FlopCounterMode(display=False, depth=None) as counter, torch.no_grad():
            model(images)
    finally:
        model.train(was_training)
        for parameter, flag in requires_grad.items():
            parameter.requires_grad_(flag)
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root, batch = type(model).__name__, images.shape[0]
    flops = {"total": counter.get_total_flops()}
    for child, _ in model.named_children():
        if per_module.get(f"{root}.{child}"):
            flops[_PART_NAMES.get(child, child)] = per_module[f"{root}.{child}"]
    products = sum(count for op, count in counter.get_flop_counts().get("Global", {}).items()
                   if str(op).startswith(_PRODUCT_OPS))
    flops["matmul"], flops["layers_only"] = products, flops["total"] - products
    out = {}
    for part, count in flops.items():
        out[f"gflops/{part}"] = count / batch / 1e9
        out[f"gmacs/{part}"] = count / batch / 2e9
    return out


@contextlib.contextmanager
def pinned_threads(threads: int) -> Iterator[int]:
    """Run with torch's intra-op thread count set to ``threads`` (0: all cores), then restore it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def fingerprint(device: torch.device) -> dict:
    """What every number was measured on: device, its name, torch, threads, Python."""
    return {
        "device": str(device), "device_type": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch": torch.__version__, "cuda": torch.version.cuda if device.type == "cuda" else None,
        "threads": torch.get_num_threads(), "python": platform.python_version(),
    }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@functools.lru_cache(maxsize=None)
def _matmul_gflops(device: str, dtype: torch.dtype, threads: int) -> float:
    device_ = torch.device(device)
    size = 4096 if device_.type == "cuda" else 1024
    a = torch.randn(size, size, device=device_).to(dtype)
    b = torch.randn(size, size, device=device_).to(dtype)
    seconds = _time_calls(lambda: torch.mm(a, b), device_, warmup=3, iters=10)
    return 2 * size**3 / statistics.median(seconds) / 1e9


def machine_matmul_gflops(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """This machine's measured dense matmul throughput (GFLOP/s, median of 10 square
    matmuls) on ``device`` in ``dtype`` with the current thread count; measured once per process."""
    return _matmul_gflops(str(device), dtype, torch.get_num_threads())


def _time_calls(fn, device: torch.device, warmup: int, iters: int) -> list[float]:
    """Seconds per call of ``fn``, each call synchronised."""
    for _ in range(warmup):
        fn()
    _synchronize(device)
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) / 1e3 for start, end in events]
    seconds = []
    for _ in range(iters):
        began = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - began)
    return seconds


def _status_kib(field: str) -> int | None:
    with contextlib.suppress(OSError):
        with open(_PROC_STATUS) as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    return None


def _reset_peak_rss() -> bool:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``, so that memory the
    model frees and re-uses between forwards is counted again), then reset this process's
    peak resident size (VmHWM) to its current size; False where the kernel does not allow
    it (then CPU peak memory is not reported)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda_allocator"
    return "rss_high_water_mark" if _reset_peak_rss() else "unavailable"


class _PeakMemory:
    """Peak memory (MB) used by what runs inside ``with`` beyond what was in use before it
    (NaN where ``memory_method`` is ``unavailable``)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mb = device, float("nan")

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device)
        else:
            self._before = _status_kib("VmRSS") if _reset_peak_rss() else None
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._before) / 2**20
        elif self._before is not None:
            self.peak_mb = max(0, _status_kib("VmHWM") - self._before) / 1024


def check_settings(settings: MeasureConfig) -> None:
    """``InputError`` naming the ``measure.*`` key that is out of range."""
    check_fields(settings, "measure")


def _images(batch: int, size: int, device: torch.device, channels_last: bool) -> Tensor:
    images = torch.rand(batch, 3, size, size, device=device) * 255
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def _autocast(device: torch.device, dtype: str):
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def _prepared(model: nn.Module, settings: MeasureConfig) -> nn.Module:
    """The model to time: a copy, converted to channels_last and/or compiled when asked,
    so the caller's model is left as it was."""
    if not (settings.channels_last or settings.compile):
        return model
    model = copy.deepcopy(model)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if settings.compile:
        model.compile()
    return model


def measure_latency(model: nn.Module, settings: MeasureConfig, device: torch.device) -> dict[str, float]:
    """Latency percentiles, throughput and peak memory for each batch size in ``settings``.

    Keys per batch size b: ``latency/bs{b}/{p50,p90,p99,mean,std}_ms``,
    ``throughput/bs{b}/images_per_s`` (b / median latency) and ``memory/bs{b}/peak_mb``.
    A batch size that runs out of memory is halved until one fits; its numbers are then
    under the batch size measured and ``oom/bs{b}/measured_batch`` records the swap (if
    even batch 1 does not fit, the out-of-memory error is raised). The caller pins the
    threads (``pinned_threads``).
    """
    check_settings(settings)
    was_training = model.training
    timed = _prepared(model.eval(), settings)
    infer = getattr(timed, "predict", timed)
    out: dict[str, float] = {}
    try:
        for requested in settings.batch_sizes:
            batch = requested
            while True:
                try:
                    out.update(_time_batch(infer, batch, settings, device))
                    break
                except Exception as exc:
                    if not is_out_of_memory(exc) or batch == 1:
                        raise
                batch //= 2
                _release_memory(device)
            if batch != requested:
                out[f"oom/bs{requested}/measured_batch"] = batch
    finally:
        model.train(was_training)
    return out


def _time_batch(infer, batch: int, settings: MeasureConfig, device: torch.device) -> dict[str, float]:
    images = _images(batch, settings.image_size, device, settings.channels_last)
    with torch.inference_mode(), _autocast(device, settings.dtype):
        for _ in range(settings.warmup):
            infer(images)
        with _PeakMemory(device) as memory:
            seconds = _time_calls(lambda: infer(images), device, warmup=0, iters=settings.iters)
    ms = sorted(s * 1e3 for s in seconds)
    quantiles = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    prefix = f"latency/bs{batch}"
    return {f"{prefix}/p50_ms": statistics.median(ms), f"{prefix}/p90_ms": quantiles[89],
            f"{prefix}/p99_ms": quantiles[98], f"{prefix}/mean_ms": statistics.fmean(ms),
            f"{prefix}/std_ms": statistics.pstdev(ms),
            f"throughput/bs{batch}/images_per_s": batch / (statistics.median(ms) / 1e3),
            f"memory/bs{batch}/peak_mb": memory.peak_mb}


def _release_memory(device: torch.device) -> None:
    """Give back what a failed (out-of-memory) attempt left allocated."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measured_batches(metrics: dict[str, float], settings: MeasureConfig) -> list[int]:
    """The batch sizes ``measure_latency`` ended up timing, in ``settings`` order."""
    sizes = [int(metrics.get(f"oom/bs{b}/measured_batch", b)) for b in settings.batch_sizes]
    return list(dict.fromkeys(sizes))


def measure_model(model: nn.Module, settings: MeasureConfig, device: torch.device,
                  threads: int = 0) -> tuple[dict[str, float], dict]:
    """Everything ``harness.measure`` reports for one model, with threads pinned.

    Returns (metrics, record): metrics are numbers (FLOPs, parameters for a
    ``Segmentor``, latency/throughput/memory per batch size, the machine's matmul
    GFLOP/s and the model's achieved GFLOP/s and fraction of it per batch size);
    record says how they were taken (settings, timer, memory method, machine fingerprint).
    """
    check_settings(settings)
    with pinned_threads(threads):
        metrics: dict[str, float] = dict(count_parameters(model))
        metrics.update(count_flops(model, _images(1, settings.image_size, device, False)))
        metrics.update(measure_latency(model, settings, device))
        peak = machine_matmul_gflops(device, DTYPES[settings.dtype])
        metrics["efficiency/machine_matmul_gflops_per_s"] = peak
        batches = measured_batches(metrics, settings)
        for batch in batches:
            achieved = metrics["gflops/total"] * metrics[f"throughput/bs{batch}/images_per_s"]
            metrics[f"efficiency/bs{batch}/achieved_gflops_per_s"] = achieved
            metrics[f"efficiency/bs{batch}/fraction_of_matmul"] = achieved / peak
        record = {
            "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
            "measured_batch_sizes": batches,  # differs from settings' after an out-of-memory retry
            "protocol": TIMED_PROTOCOL,
            "timer": "cuda_events" if device.type == "cuda" else "perf_counter",
            "memory": memory_method(device),
            "flop_counter": "torch.utils.flop_counter (gflops = 2 x gmacs)",
            "machine": fingerprint(device),
        }
    return metrics, record
