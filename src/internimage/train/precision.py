"""Mixed precision: which autocast dtype an ``amp`` setting means, and the autocast context."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from internimage.errors import ConfigError

__all__ = ["autocast_context", "resolve_amp"]


def resolve_amp(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """Autocast dtype and whether a GradScaler is needed for the ``amp`` setting on ``device``."""
    if amp == "none":
        return None, False
    if amp == "auto":
        if device.type != "cuda":
            return None, False
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, False
        return torch.float16, True
    if amp == "bf16":
        return torch.bfloat16, False
    if device.type != "cuda":
        raise ConfigError("amp='fp16' needs a CUDA device; use 'bf16' on CPU")
    return torch.float16, True


def autocast_context(
    device: torch.device, dtype: torch.dtype | None
) -> AbstractContextManager[Any]:
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op context for full precision."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
