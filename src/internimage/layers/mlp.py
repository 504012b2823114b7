"""The two-layer feed-forward network of each block."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Mlp"]


class Mlp(nn.Module):
    """``fc1`` -> GELU (erf) -> dropout -> ``fc2`` -> dropout, on the last axis.

    Args:
        channels: Input and output width C.
        hidden_channels: Hidden width (``int(C * mlp_ratio)`` in the model).
        drop: Dropout probability after the activation and after ``fc2``.
        fc2_bias: Whether ``fc2`` has a bias (FlashInternImage's T/S/B have none).
    """

    def __init__(
        self, channels: int, hidden_channels: int, drop: float = 0.0, *, fc2_bias: bool = True
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden_channels)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_channels, channels, bias=fc2_bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., C]`` -> ``[..., C]``."""
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))
