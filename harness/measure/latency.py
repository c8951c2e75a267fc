"""Latency percentiles, throughput and peak memory of a model's inference forward per batch size."""

from __future__ import annotations

import contextlib
import copy
import statistics

import torch
from torch import Tensor, nn

from harness import metric_keys as keys
from harness.config import MeasureConfig
from harness.errors import is_out_of_memory
from harness.measure.machine import time_calls
from harness.measure.memory import PeakMemory, release_memory
from harness.measure.settings import DTYPES, check_settings


def random_images(batch: int, size: int, device: torch.device, channels_last: bool) -> Tensor:
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
                release_memory(device)
            if batch != requested:
                out[f"oom/bs{requested}/measured_batch"] = batch
    finally:
        model.train(was_training)
    return out


def _time_batch(infer, batch: int, settings: MeasureConfig, device: torch.device) -> dict[str, float]:
    images = random_images(batch, settings.image_size, device, settings.channels_last)
    with torch.inference_mode(), _autocast(device, settings.dtype):
        for _ in range(settings.warmup):
            infer(images)
        with PeakMemory(device) as memory:
            seconds = time_calls(lambda: infer(images), device, warmup=0, iters=settings.iters)
    ms = sorted(s * 1e3 for s in seconds)
    quantiles = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    return {keys.latency(batch, "p50"): statistics.median(ms), keys.latency(batch, "p90"): quantiles[89],
            keys.latency(batch, "p99"): quantiles[98], keys.latency(batch, "mean"): statistics.fmean(ms),
            keys.latency(batch, "std"): statistics.pstdev(ms),
            keys.throughput(batch): batch / (statistics.median(ms) / 1e3),
            keys.peak_memory(batch): memory.peak_mb}


def measured_batches(metrics: dict[str, float], settings: MeasureConfig) -> list[int]:
    """The batch sizes ``measure_latency`` ended up timing, in ``settings`` order."""
    sizes = [int(metrics.get(keys.oom_batch(b), b)) for b in settings.batch_sizes]
    return list(dict.fromkeys(sizes))
