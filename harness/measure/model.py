"""A model's whole cost measurement (docs/architecture.md, "Measurement"): parameters, FLOPs, latency,
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

import torch
from torch import nn

from harness import metric_keys as keys
from harness.config import MeasureConfig
from harness.measure.flops import count_flops
from harness.measure.latency import measure_latency, measured_batches, random_images
from harness.measure.machine import fingerprint, machine_matmul_gflops, pinned_threads
from harness.measure.memory import memory_method
from harness.measure.params import count_parameters
from harness.measure.settings import DTYPES, TIMED_PROTOCOL, check_settings


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
        metrics.update(count_flops(model, random_images(1, settings.image_size, device, False)))
        metrics.update(measure_latency(model, settings, device))
        peak = machine_matmul_gflops(device, DTYPES[settings.dtype])
        metrics[keys.MACHINE_MATMUL] = peak
        batches = measured_batches(metrics, settings)
        for batch in batches:
            achieved = metrics[keys.gflops()] * metrics[keys.throughput(batch)]
            metrics[keys.achieved(batch)] = achieved
            metrics[keys.fraction_of_matmul(batch)] = achieved / peak
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
