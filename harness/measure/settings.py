"""What a measurement is asked for and what it reports: dtypes, the checked ``measure.*`` settings,
the metric prefixes a measurement owns and the protocol latency times."""

from __future__ import annotations

import torch

from harness.config import MeasureConfig, check_fields

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


TIMED_PROTOCOL = "whole image, one forward at measure.image_size (not the eval protocol)"  # what latency times


def check_settings(settings: MeasureConfig) -> None:
    """``InputError`` naming the ``measure.*`` key that is out of range."""
    check_fields(settings, "measure")
