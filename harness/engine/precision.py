"""Mixed precision for the training step: autocast and, for fp16, a gradient scaler."""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """``train.precision`` on ``device``: ``autocast()`` around forwards (a no-op for fp32),
    ``backward(loss)`` (scaled for fp16) and ``step(optimizer, parameters, grad_clip)``
    (unscale, clip, step; an fp16 step whose gradients overflowed is skipped and the scale
    lowered, as ``torch.amp.GradScaler`` does). The scaler's state is checkpointed."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.name, self.device_type, self.dtype = name, device.type, DTYPES[name]
        self.scaler = torch.amp.GradScaler(device.type, enabled=name == "fp16")

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, parameters, grad_clip: float | None) -> None:
        if grad_clip is not None:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.scaler.load_state_dict(state)
