"""Loading weights: upstream checkpoints, safetensors files and our own checkpoints."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from internimage.errors import CheckpointFileError, MissingFileError, UserError

__all__ = [
    "CheckpointMismatchError",
    "LoadResult",
    "extract_state_dict",
    "load_checkpoint",
    "read_checkpoint",
]

# Wrappers under which checkpoints keep their weights, tried in this order.
_WEIGHT_KEYS = ("model", "state_dict")
# Prefixes added by DistributedDataParallel (module.), by dense-prediction frameworks (backbone.)
# and by upstream's Hugging Face classifier (model.).
_PREFIXES = ("module.", "backbone.", "model.")
# Upstream's Hugging Face repositories name the layer scale "layer_scale1/2" (the .pth files and
# this library: "gamma1/2").
_LAYER_SCALE_NAME = re.compile(r"\.layer_scale([12])$")


class CheckpointMismatchError(UserError, RuntimeError):
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
    """Read a checkpoint file: safetensors, or a pickle with ``weights_only=True``.

    Raises:
        CheckpointFileError: The file is missing, a folder, empty, truncated, corrupt, not a
            checkpoint, or holds Python objects other than tensors and plain data (which are
            never unpickled: that could run code). The message names the file.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointFileError(f"checkpoint {path} is a folder, not a file")
    if not path.is_file():
        raise MissingFileError(f"checkpoint file not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointFileError(f"checkpoint {path} is empty (0 bytes); it was not written out")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as error:
            raise CheckpointFileError(
                f"checkpoint {path} is not a valid safetensors file ({error})"
            ) from None
    try:
        # weights_only refuses arbitrary pickled objects: checkpoints are data, never code.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types here; each becomes one clear message
        raise CheckpointFileError(_describe_unloadable(path, size, error)) from None
    if not isinstance(loaded, Mapping):
        raise CheckpointFileError(
            f"checkpoint {path} holds a {type(loaded).__name__}, not a mapping of weights"
        )
    return loaded


# First bytes of the two torch.save formats: a zip archive (torch >= 1.6) and a legacy pickle.
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_2 = b"\x80\x02"


def _describe_unloadable(path: Path, size: int, error: Exception) -> str:
    """Why ``torch.load`` could not read ``path``, in words that name the file and say what to do.

    torch's own messages do not name the file, and for files with Python objects in them they
    suggest ``weights_only=False``, which would run whatever code the file holds.
    """
    with path.open("rb") as handle:
        head = handle.read(8)
    text = str(error)
    if isinstance(error, pickle.UnpicklingError) and "Unsupported global" in text:
        return (
            f"checkpoint {path} holds Python objects other than tensors and plain data, which "
            f"are not loaded because unpickling them can run code; re-save just the weights "
            f"(torch.save(model.state_dict(), ...)) where the file was made"
        )
    if head.startswith(_ZIP_MAGIC):
        return (
            f"checkpoint {path} is truncated or damaged ({size} bytes; the archive is "
            f"incomplete); copy or download it again"
        )
    if head.startswith(_PICKLE_PROTOCOL_2) and isinstance(error, EOFError | pickle.UnpicklingError):
        return (
            f"checkpoint {path} is truncated or damaged ({size} bytes, old torch format); copy "
            f"or download it again"
        )
    return (
        f"{path} is not a checkpoint: neither a torch.save file nor safetensors "
        f"({size} bytes starting {head!r})"
    )


def extract_state_dict(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint, with wrapper keys and prefixes removed.

    Weights are taken from ``checkpoint['model']`` or ``checkpoint['state_dict']`` when present,
    otherwise the mapping itself is the state dict; ``module.``, ``backbone.`` and ``model.``
    prefixes are stripped (in any combination), and upstream's Hugging Face names of the layer
    scale (``layer_scale1/2``) become ``gamma1/2``.

    Raises:
        TypeError: The weights are not a mapping of names to tensors.
    """
    state: object = checkpoint
    for key in _WEIGHT_KEYS:
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(key), Mapping):
            state = checkpoint[key]
            break
    if not isinstance(state, Mapping):
        raise CheckpointFileError(
            f"checkpoint weights must be a mapping, got {type(state).__name__}"
        )
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
        result[_LAYER_SCALE_NAME.sub(r".gamma\1", name)] = value
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
