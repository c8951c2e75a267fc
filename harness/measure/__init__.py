"""Measurement: what a model costs (docs/architecture.md, "Measurement").

- ``params``: ``count_parameters`` (total, backbone, neck, head inference / training-only,
  auxiliary head, non-learnable state).
- ``flops``: ``count_flops`` (GFLOPs = 2 x GMACs, with and without the products between activations).
- ``latency``: ``measure_latency`` (percentiles, throughput and peak memory per batch size).
- ``memory``: ``PeakMemory`` (CUDA allocator on GPU, resident high-water mark on CPU).
- ``machine``: ``fingerprint``, ``pinned_threads``, ``machine_matmul_gflops``.
- ``settings``: ``check_settings``, ``TIMED_PROTOCOL``. The metrics' names: ``harness.metric_keys``.
- ``model``: ``measure_model``, all of the above with threads pinned, and the record of how.
- ``table``: ``format_measurement``, the table ``segheads measure`` prints.
- ``training``: ``training_flops``, a cell's training cost estimated before it runs (meta device).
- ``vocabulary``: ``vocabulary_scaling``, each head's cost as the class count grows.
"""

from harness.measure.flops import count_flops
from harness.measure.latency import measure_latency, measured_batches
from harness.measure.machine import fingerprint, machine_matmul_gflops, pinned_threads
from harness.measure.memory import PeakMemory, memory_method
from harness.measure.model import measure_model
from harness.measure.params import count_parameters
from harness.measure.settings import DTYPES, TIMED_PROTOCOL, check_settings
from harness.measure.table import format_measurement
from harness.measure.training import training_flops
from harness.measure.vocabulary import SCALING_CLASSES, vocabulary_scaling

__all__ = [
    "DTYPES",
    "SCALING_CLASSES",
    "TIMED_PROTOCOL",
    "PeakMemory",
    "check_settings",
    "count_flops",
    "count_parameters",
    "fingerprint",
    "format_measurement",
    "machine_matmul_gflops",
    "measure_latency",
    "measure_model",
    "measured_batches",
    "memory_method",
    "pinned_threads",
    "training_flops",
    "vocabulary_scaling",
]
