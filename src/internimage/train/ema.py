"""Exponential moving average of model weights."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ModelEma"]


class ModelEma:
    """A shadow copy of a model whose floating-point weights follow ``ema = d * ema + (1 - d) * w``.

    Buffers that are not floating point (e.g. BatchNorm's ``num_batches_tracked``) are copied.
    The copy is evaluated like the model itself.

    Args:
        model: The (unwrapped) model to follow; its current weights initialise the average.
        decay: ``d`` above.
        warmup: Use ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the average forgets
            the random initial weights quickly in short runs.
    """

    def __init__(self, model: nn.Module, decay: float, *, warmup: bool = False) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.updates = 0

    def current_decay(self) -> float:
        """Decay the next :meth:`update` uses."""
        if self.warmup:
            return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights."""
        decay = self.current_decay()
        ema_state = self.module.state_dict()
        for name, value in model.state_dict().items():
            target = ema_state[name]
            if target.is_floating_point():
                target.lerp_(value.to(target.dtype), 1.0 - decay)
            else:
                target.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict:
        """Weights and update count."""
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore weights and update count."""
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
