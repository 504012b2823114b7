"""Loading weights: upstream checkpoints, safetensors files and our own checkpoints."""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Callable, Mapping
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
    "safetensors_header",
    "weights_container",
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

    @classmethod
    def compare(
        cls, state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]
    ) -> LoadResult:
        """How checkpoint tensors ``state`` fit a model's ``state_dict()`` ``own``."""
        return cls(
            missing=tuple(k for k in own if k not in state),
            unexpected=tuple(k for k in state if k not in own),
            mismatched=tuple(
                (k, tuple(v.shape), tuple(own[k].shape))
                for k, v in state.items()
                if k in own and tuple(v.shape) != tuple(own[k].shape)
            ),
        )

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


# A safetensors file starts with the length of its JSON header (little-endian u64), then "{".
_SAFETENSORS_HEADER_LIMIT = 100 * 1024 * 1024


def safetensors_header(path: str | os.PathLike[str]) -> dict[str, object] | None:
    """The JSON header of a safetensors file (tensor names, dtypes, shapes, offsets), read
    without the tensors; None when the file is not a safetensors file, whatever its name."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(9)
            if len(head) < 9 or head[8:9] != b"{":
                return None
            (length,) = struct.unpack("<Q", head[:8])
            if not 2 <= length <= min(size - 8, _SAFETENSORS_HEADER_LIMIT):
                return None
            handle.seek(8)
            header = json.loads(handle.read(length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return header if isinstance(header, dict) else None


def read_checkpoint(
    path: str | os.PathLike[str], *, mmap: bool = False
) -> Mapping[str, object]:
    """Read a checkpoint file: safetensors (recognised by its content, whatever the suffix), or
    a pickle with ``weights_only=True``.

    Args:
        path: The file.
        mmap: Map the tensors of a zip-format ``torch.save`` file instead of reading them, for
            a caller that needs only the plain data beside them (the task, the config): the
            file is then read once, by whoever loads the weights. Other files are read whole.

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
    # The content decides, not the name: safetensors files named .pth (or .SAFETENSORS) and
    # torch files named .safetensors both occur.
    if safetensors_header(path) is not None:
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
        # mmap works only on the zip format (torch.save's default since torch 1.6).
        if path.suffix.lower() == ".safetensors":
            # torch.load reads a path with this suffix as safetensors; this one is not, so it
            # gets the open file (which cannot be mapped).
            with path.open("rb") as handle:
                loaded = torch.load(handle, map_location="cpu", weights_only=True)
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True,
                                mmap=mmap and zipfile.is_zipfile(path))
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


# Modules of a dense backbone (InternImageFeatures): the stem and the stages.
_BACKBONE_PREFIXES = ("patch_embed.", "levels.")
_LAYER_SCALE_KEY = re.compile(r"\.gamma[12]$")


def load_backbone_weights(
    features: nn.Module, checkpoint: str | os.PathLike[str] | Mapping[str, object]
) -> LoadResult:
    """Load the stem and stages of a checkpoint into a dense backbone (``InternImageFeatures``).

    The checkpoint may be a classifier (upstream's, a Hugging Face one, or a training run's
    ``best.pt``) or a dense model whose backbone has the same architecture; everything outside
    the stem and stages (classifier heads, decoders) is ignored. Layer-scale tensors
    (``gamma1``/``gamma2``) that the checkpoint lacks keep their initial value: upstream's dense
    InternImage-T adds layer scale 1.0 to the T classifier, which has none, and starts from it
    this way. Every other tensor must be there with the same shape.

    Returns:
        What was left at its initial value (``missing``: layer scales only).

    Raises:
        CheckpointMismatchError: A backbone tensor is missing or wrongly shaped (all listed).
        CheckpointFileError: The file is not a readable checkpoint.
    """
    payload = checkpoint if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint)
    state = {k: v for k, v in extract_state_dict(payload).items()
             if k.startswith(_BACKBONE_PREFIXES)}
    result = LoadResult.compare(state, features.state_dict())
    problems = LoadResult(
        missing=tuple(k for k in result.missing if not _LAYER_SCALE_KEY.search(k)),
        unexpected=result.unexpected,
        mismatched=result.mismatched,
    )
    if not problems.ok:
        raise CheckpointMismatchError(
            f"the checkpoint's backbone does not fit this one:\n{problems.describe()}"
        )
    features.load_state_dict(state, strict=False)
    return result


def load_converted_strictly(
    model: torch.nn.Module, checkpoint: str | os.PathLike[str] | Mapping[str, object],
    convert: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]], *, source: str,
) -> None:
    """Load an OpenMMLab checkpoint (``{"meta", "state_dict"}``, or a bare state dict) into
    ``model`` after converting its keys with ``convert``; every key must match.

    Args:
        model: The model built from the checkpoint's config.
        checkpoint: The file, or its loaded contents.
        convert: Checkpoint keys and tensors -> the model's.
        source: What the checkpoint is, for messages (e.g. ``"the mmdet checkpoint"``).

    Raises:
        CheckpointMismatchError: A key is missing, unexpected or wrongly shaped (all listed).
        CheckpointFileError: The file is not a readable checkpoint, or holds no tensor mapping.
    """
    payload = checkpoint if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint)
    state = payload.get("state_dict", payload)
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise CheckpointFileError(f"{source}'s state_dict is not a mapping of tensors")
    converted = convert(state)
    result = LoadResult.compare(converted, model.state_dict())
    if not result.ok:
        raise CheckpointMismatchError(
            f"{source} does not match the model of its config:\n{result.describe()}"
        )
    model.load_state_dict(converted, strict=True)


def weights_container(checkpoint: Mapping[str, object]) -> Mapping[str, object]:
    """Where a checkpoint keeps its weights: ``checkpoint['model']`` (classifiers, beside
    ``model_ema`` and the optimizer) or ``checkpoint['state_dict']`` (OpenMMLab files) when
    present, otherwise the checkpoint itself. Keys are not changed."""
    for key in _WEIGHT_KEYS:
        value = checkpoint.get(key)
        if isinstance(value, Mapping):
            return value
    return checkpoint


def extract_state_dict(
    checkpoint: Mapping[str, object], *, ema: bool = False
) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint, with wrapper keys and prefixes removed.

    Weights are taken from ``checkpoint['model']`` or ``checkpoint['state_dict']`` when present,
    otherwise the mapping itself is the state dict; ``module.``, ``backbone.`` and ``model.``
    prefixes are stripped (in any combination), and upstream's Hugging Face names of the layer
    scale (``layer_scale1/2``) become ``gamma1/2``.

    Args:
        checkpoint: The loaded checkpoint.
        ema: Take the EMA copy that upstream's classification training saves beside the weights
            (``checkpoint['model_ema']``) instead.

    Raises:
        TypeError: The weights are not a mapping of names to tensors.
        CheckpointFileError: ``ema`` is set and the checkpoint has no ``model_ema``.
    """
    state: object = checkpoint
    if ema:
        if not isinstance(checkpoint.get("model_ema"), Mapping):
            raise CheckpointFileError(
                "the checkpoint has no 'model_ema' weights (upstream saves them only when its "
                "training ran with EMA); load it without ema=True"
            )
        checkpoint = {"model": checkpoint["model_ema"]}
    if isinstance(checkpoint, Mapping):
        state = weights_container(checkpoint)
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
    ema: bool = False,
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
        ema: Load the EMA copy of an upstream classification checkpoint (``model_ema``).

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
    state = extract_state_dict(checkpoint, ema=ema)
    own = model.state_dict()
    result = LoadResult.compare(state, own)
    if strict and not result.ok:
        raise CheckpointMismatchError(
            f"checkpoint does not match {type(model).__name__}:\n{result.describe()}"
        )
    bad = {k for k, _, _ in result.mismatched}
    usable = {k: v for k, v in state.items() if k in own and k not in bad}
    on_meta = any(t.is_meta for t in own.values())
    model.load_state_dict(usable, strict=False, assign=on_meta)
    return result
