"""Layout converters and LayerNorm wrappers that reproduce the upstream module nesting.

Upstream wraps every normalisation in an ``nn.Sequential`` that may convert the layout before and
after it, so the norm's parameters sit at index 0 or 1 of the container (``norm1.0.weight``,
``patch_embed.norm1.1.weight``). These builders give exactly that nesting so that released
checkpoints load without renaming keys.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "LAYER_NORM_EPS",
    "ToChannelsFirst",
    "ToChannelsLast",
    "batch_norm_nchw",
    "layer_norm_nchw",
    "layer_norm_nchw_to_nhwc",
    "layer_norm_nhwc",
]

#: Epsilon of every LayerNorm in the model.
LAYER_NORM_EPS = 1e-6


class ToChannelsFirst(nn.Module):
    """``[N, H, W, C]`` -> ``[N, C, H, W]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Permute a channels-last tensor to channels-first."""
        return x.permute(0, 3, 1, 2)


class ToChannelsLast(nn.Module):
    """``[N, C, H, W]`` -> ``[N, H, W, C]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Permute a channels-first tensor to channels-last."""
        return x.permute(0, 2, 3, 1)


def layer_norm_nhwc(channels: int, eps: float = LAYER_NORM_EPS) -> nn.Sequential:
    """LayerNorm over the last axis of an NHWC (or token) tensor; parameters at ``.0``."""
    return nn.Sequential(nn.LayerNorm(channels, eps=eps))


def layer_norm_nchw_to_nhwc(channels: int, eps: float = LAYER_NORM_EPS) -> nn.Sequential:
    """NCHW in, LayerNorm over channels, NHWC out; parameters at ``.1``."""
    return nn.Sequential(ToChannelsLast(), nn.LayerNorm(channels, eps=eps))


def layer_norm_nchw(channels: int, eps: float = LAYER_NORM_EPS) -> nn.Sequential:
    """NCHW in and out, LayerNorm over channels; parameters at ``.1``."""
    return nn.Sequential(ToChannelsLast(), nn.LayerNorm(channels, eps=eps), ToChannelsFirst())


def batch_norm_nchw(channels: int) -> nn.Sequential:
    """BatchNorm2d (PyTorch default eps and momentum) on NCHW; parameters at ``.0``."""
    return nn.Sequential(nn.BatchNorm2d(channels))
