"""The names of a cell's metrics, a contract between the packages: ``measure`` and ``engine`` write
them, ``tracking`` logs them, ``grid``, ``report`` and ``check`` read them. Every name is built
(and parsed back) here; nothing else spells one out.

- Evaluation (``harness.evaluation``, detectron2's names): ``mIoU``, ``fwIoU``, ``mACC``, ``pACC``,
  ``IoU-<class>`` (``class_iou``), ``ACC-<class>`` (``class_accuracy``); a further protocol's
  summary as ``<metric>/<protocol>`` (``protocol_metric``).
- Parameters: ``params/<part>`` (``params``).
- Cost: ``gflops/<part>``, ``gmacs/<part>`` (``gflops``, ``gmacs``); per batch size b
  ``latency/bs<b>/<stat>_ms`` (``latency``), ``throughput/bs<b>/images_per_s`` (``throughput``),
  ``memory/bs<b>/peak_mb`` (``peak_memory``), ``oom/bs<b>/measured_batch`` (``oom_batch``),
  ``efficiency/...`` (``MACHINE_MATMUL``, ``achieved``, ``fraction_of_matmul``); ``measured_batches`` parses the batch sizes back.
  ``MEASUREMENT_PREFIXES`` are the names a measurement owns (a re-measurement replaces them).
- Training: ``loss/<term>`` (``loss``, ``TOTAL_LOSS``), ``TRAIN_SECONDS``, ``TRAIN_SPEED``,
  ``EVAL_SECONDS``; a training row's ``time/...`` and periodic ``val/<metric>`` (``periodic``).
"""

from __future__ import annotations

import re

MIOU = "mIoU"
MEASUREMENT_PREFIXES = ("gflops/", "gmacs/", "latency/", "throughput/", "memory/", "efficiency/", "oom/")
LATENCY_STATS = ("p50", "p90", "p99", "mean", "std")

TOTAL_LOSS = "loss/total"
TRAIN_SECONDS = "train/seconds"
TRAIN_SPEED = "train/iters_per_second"
EVAL_SECONDS = "eval/seconds"
ROW_SPEED = "time/iters_per_second"
ROW_ETA = "time/eta_seconds"

_LATENCY = re.compile(r"^latency/bs(\d+)/p50_ms$")


def class_iou(name: str) -> str:
    return f"IoU-{name}"


def class_accuracy(name: str) -> str:
    return f"ACC-{name}"


def protocol_metric(metric: str, protocol: str) -> str:
    """A summary ``metric`` under a further evaluation ``protocol`` (e.g. ``mIoU/ms_flip``)."""
    return f"{metric}/{protocol}"


def params(part: str) -> str:
    """``params/<part>``: total, inference, training_only, auxiliary, backbone, neck, head, ..."""
    return f"params/{part}"


def gflops(part: str = "total") -> str:
    return f"gflops/{part}"


def gmacs(part: str = "total") -> str:
    return f"gmacs/{part}"


def latency(batch: int, stat: str = "p50") -> str:
    """``latency/bs<batch>/<stat>_ms``, ``stat`` one of ``LATENCY_STATS``."""
    return f"latency/bs{batch}/{stat}_ms"


def throughput(batch: int) -> str:
    return f"throughput/bs{batch}/images_per_s"


def peak_memory(batch: int) -> str:
    return f"memory/bs{batch}/peak_mb"


def oom_batch(batch: int) -> str:
    """The batch size measured instead of ``batch`` after it ran out of memory."""
    return f"oom/bs{batch}/measured_batch"


MACHINE_MATMUL = "efficiency/machine_matmul_gflops_per_s"


def achieved(batch: int) -> str:
    return f"efficiency/bs{batch}/achieved_gflops_per_s"


def fraction_of_matmul(batch: int) -> str:
    return f"efficiency/bs{batch}/fraction_of_matmul"


def measured_batches(metrics: dict) -> list[int]:
    """The batch sizes ``metrics`` hold a median latency for, smallest first."""
    return sorted(int(match.group(1)) for key in metrics if (match := _LATENCY.match(key)))


def is_measurement(key: str) -> bool:
    """Whether ``key`` is a metric a cost measurement owns."""
    return key.startswith(MEASUREMENT_PREFIXES)


def loss(term: str) -> str:
    return f"loss/{term}"


def is_loss(key: str) -> bool:
    return key.startswith("loss/")


def periodic(metric: str) -> str:
    """A periodic evaluation's ``metric`` in a training row (``val/mIoU``)."""
    return f"val/{metric}"
