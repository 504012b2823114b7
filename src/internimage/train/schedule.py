"""Learning-rate scaling and the per-step schedule: linear warm-up, then cosine, poly or step
decay."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["WarmupCosineSchedule", "scaled_lr"]

#: The batch size learning rates are quoted for (upstream: "lr per 512 images").
REFERENCE_BATCH = 512


def scaled_lr(lr_per_512: float, total_batch: int) -> float:
    """Linear scaling rule: ``lr_per_512 * total_batch / 512``."""
    if total_batch < 1:
        raise ValueError(f"total batch must be positive, got {total_batch}")
    return lr_per_512 * total_batch / REFERENCE_BATCH


class WarmupCosineSchedule:
    """Sets every group's lr to ``value(step) * group['lr_scale']`` once per optimiser step.

    ``value`` rises linearly from ``warmup_lr`` (step 0) towards ``base_lr`` over
    ``warmup_steps``, then decays from ``base_lr`` to ``min_lr`` at ``total_steps``: along a half
    cosine, or (``decay="poly"``, mmseg's schedule) as ``(1 - progress) ** power``, or
    (``decay="step"``, mmdet's schedule) multiplied by ``gamma`` at each of ``milestones``
    (optimiser steps; ``min_lr`` is not used). The first call of :meth:`apply` happens before
    the first step.

    Args:
        optimizer: Its param groups may carry ``lr_scale`` (layer-wise decay); default 1.
        base_lr: Peak learning rate (already scaled by the batch size).
        warmup_lr: Learning rate at step 0.
        min_lr: Learning rate at the last step.
        warmup_steps: Warm-up length in optimiser steps.
        total_steps: Total optimiser steps of the run.
        decay: ``cosine``, ``poly`` or ``step``.
        power: Power of the polynomial decay.
        milestones: Steps at which the step decay multiplies the rate by ``gamma``.
        gamma: Factor of each step.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        base_lr: float,
        warmup_lr: float,
        min_lr: float,
        warmup_steps: int,
        total_steps: int,
        decay: str = "cosine",
        power: float = 1.0,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
    ) -> None:
        if decay not in ("cosine", "poly", "step"):
            raise ValueError(f"decay must be 'cosine', 'poly' or 'step', got {decay!r}")
        if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
            raise ValueError(
                f"need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps}), "
                f"total_steps >= 1"
            )
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.warmup_lr = warmup_lr
        self.min_lr = min_lr
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.decay = decay
        self.power = power
        self.milestones = tuple(sorted(int(m) for m in milestones))
        self.gamma = gamma
        self.step_count = 0

    def value(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.warmup_lr + (self.base_lr - self.warmup_lr) * step / self.warmup_steps
        if self.decay == "step":
            return self.base_lr * self.gamma ** sum(step >= m for m in self.milestones)
        decay_steps = self.total_steps - self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, decay_steps))
        if self.decay == "poly":
            factor = (1.0 - progress) ** self.power
        else:
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr + (self.base_lr - self.min_lr) * factor

    def apply(self) -> float:
        """Set the lr of the coming step on every group; returns the unscaled value."""
        lr = self.value(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def step(self) -> None:
        """Advance after an optimiser step."""
        self.step_count += 1

    def state_dict(self) -> dict[str, int]:
        """Position in the schedule."""
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the position."""
        self.step_count = int(state["step_count"])
