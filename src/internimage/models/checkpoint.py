"""Loading weights: upstream checkpoints, safetensors files and our own checkpoints."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "CheckpointMismatchError",
    "LoadResult",
    "extract_state_dict",
    "load_checkpoint",
    "read_checkpoint",
]

# Wrappers under which checkpoints keep their weights, tried in this order.
_WEIGHT_KEYS = ("model", "state_dict")
# Prefixes added by DistributedDataParallel (module.) and by dense-prediction frameworks
# (backbone.).
_PREFIXES = ("module.", "backbone.")


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's tensors do not match the model's (missing, unexpected, wrong shape)."""


@dataclass(frozen=True)
class LoadResult:
    """What a non-strict load skipped.

    Attributes:
        missing: Model keys absent from the checkpoint.
        unexpected: Checkpoint keys the model does not have.
        mismatched: ``(key, checkpoint shape, model shape)`` for keys with a different shape.
    """

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]

    @property
    def ok(self) -> bool:
        """True when every tensor matched."""
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 20) -> str:
        """Human-readable listing of the problems."""

        def listing(items: list[str]) -> str:
            shown = ", ".join(items[:limit])
            return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")

        lines = []
        if self.missing:
            lines.append(f"missing keys ({len(self.missing)}): {listing(list(self.missing))}")
        if self.unexpected:
            lines.append(
                f"unexpected keys ({len(self.unexpected)}): {listing(list(self.unexpected))}"
            )
        if self.mismatched:
            shapes = [f"{k} checkpoint {list(a)} vs model {list(b)}" for k, a, b in self.mismatched]
            lines.append(f"wrongly shaped keys ({len(shapes)}): {listing(shapes)}")
        return "\n".join(lines)


def read_checkpoint(path: str | os.PathLike[str]) -> Mapping[str, object]:
    """Read a checkpoint file: safetensors, or a pickle with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    # weights_only refuses arbitrary pickled objects: checkpoints are data, never code.
    return torch.load(path, map_location="cpu", weights_only=True)


def extract_state_dict(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint, with wrapper keys and prefixes removed.

    Weights are taken from ``checkpoint['model']`` or ``checkpoint['state_dict']`` when present,
    otherwise the mapping itself is the state dict; ``module.`` and ``backbone.`` prefixes are
    stripped (in any combination).

    Raises:
        TypeError: The weights are not a mapping of names to tensors.
    """
    state: object = checkpoint
    for key in _WEIGHT_KEYS:
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(key), Mapping):
            state = checkpoint[key]
            break
    if not isinstance(state, Mapping):
        raise TypeError(f"checkpoint weights must be a mapping, got {type(state).__name__}")
    result: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"checkpoint entry {name!r} is a {type(value).__name__}, not a tensor; pass the "
                f"weights (or a dict with them under {' or '.join(map(repr, _WEIGHT_KEYS))})"
            )
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix) :], True
        result[name] = value
    return result


def load_checkpoint(
    model: nn.Module,
    path_or_dict: str | os.PathLike[str] | Mapping[str, object],
    *,
    strict: bool = True,
) -> LoadResult:
    """Load weights into ``model``.

    Accepts a path to a ``.pth``/``.pt`` file (read with ``torch.load(weights_only=True)``), a
    ``.safetensors`` file, or an already loaded dict. See :func:`extract_state_dict` for the
    accepted layouts. A model on the meta device gets the checkpoint tensors assigned.

    Args:
        model: Target module.
        path_or_dict: Checkpoint file or mapping.
        strict: Raise unless every key matches in name and shape. Without it, matching tensors
            are loaded and the rest is reported in the result.

    Returns:
        What was skipped (empty in strict mode).

    Raises:
        CheckpointMismatchError: Strict mode and a key is missing, unexpected or wrongly shaped.
        FileNotFoundError: The file does not exist.
    """
    if isinstance(path_or_dict, Mapping):
        checkpoint = path_or_dict
    else:
        checkpoint = read_checkpoint(path_or_dict)
    state = extract_state_dict(checkpoint)
    own = model.state_dict()
    missing = tuple(k for k in own if k not in state)
    unexpected = tuple(k for k in state if k not in own)
    mismatched = tuple(
        (k, tuple(v.shape), tuple(own[k].shape))
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    )
    result = LoadResult(missing, unexpected, mismatched)
    if strict and not result.ok:
        raise CheckpointMismatchError(
            f"checkpoint does not match {type(model).__name__}:\n{result.describe()}"
        )
    bad = {k for k, _, _ in mismatched}
    usable = {k: v for k, v in state.items() if k in own and k not in bad}
    on_meta = any(t.is_meta for t in own.values())
    model.load_state_dict(usable, strict=False, assign=on_meta)
    return result
