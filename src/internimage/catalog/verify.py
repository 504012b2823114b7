"""Will a checkpoint load? Checked from its keys and shapes alone, without reading weights.

:func:`checkpoint_shapes` reads only what a file says about its tensors (a safetensors header;
a ``torch.save`` zip archive mapped, not read), and :func:`verify_checkpoint` compares those
shapes with the model a release builds, on the meta device, after the same key conversion a
load applies. A 4 GB file is checked in about a second.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from internimage.catalog.builders import build_release
from internimage.catalog.table import Release, find_release
from internimage.errors import CheckpointFileError, MissingFileError

__all__ = ["checkpoint_shapes", "verify_checkpoint"]

Shapes = Mapping[str, Sequence[int]]


def checkpoint_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of the weights a checkpoint file holds, read without the weights.

    Safetensors files (recognised by their content, whatever the suffix) give their header.
    ``torch.save`` zip archives are mapped into memory and never read beyond their index;
    the weights are taken from ``model`` or ``state_dict`` when the file has one, else from
    the file's top level. Old-format (non-zip) torch files are read whole.

    Raises:
        MissingFileError: No such file.
        CheckpointFileError: Not a checkpoint, damaged, or without a mapping of tensors.
    """
    from internimage.models.checkpoint import (
        read_checkpoint,
        safetensors_header,
        weights_container,
    )

    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise CheckpointFileError(f"checkpoint {path} is a folder, not a file")
        raise MissingFileError(f"checkpoint file not found: {path}")
    header = safetensors_header(path)
    if header is not None:
        shapes: dict[str, tuple[int, ...]] = {}
        for key, info in header.items():
            if key == "__metadata__":
                continue
            if not isinstance(info, dict) or not isinstance(info.get("shape"), list):
                raise CheckpointFileError(f"{path}: the safetensors header entry {key!r} has "
                                          f"no shape; the file is damaged")
            shapes[key] = tuple(int(v) for v in info["shape"])
        return shapes
    state = weights_container(read_checkpoint(path, mmap=zipfile.is_zipfile(path)))
    shapes = {str(k): tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not shapes:
        raise CheckpointFileError(f"{path} holds no tensors under 'model', 'state_dict' or at "
                                  f"its top level")
    return shapes


def _shape(values: Sequence[int]) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def verify_checkpoint(release: str | Release, shapes: Shapes) -> list[str]:
    """What a strict load of a checkpoint into a released model would meet, from shapes alone.

    The model is built on the meta device (nothing is allocated, so the 3-billion-parameter
    models are checked as fast as the small ones) and the file's keys go through the same
    conversion as a load. Known extras are not problems: the ``ema_*`` copies that mmdet's EMA
    hook adds to some detection files.

    Args:
        release: A released name, file name (as released, e.g.
            ``"upernet_internimage_t_512_160k_ade20k.pth"``) or alias, or a
            :class:`~internimage.catalog.table.Release`.
        shapes: ``{key: shape}`` of the file's weights, as :func:`checkpoint_shapes` reads them
            (container already taken).

    Returns:
        One line per problem (``missing``, ``unexpected`` or ``wrong shape``, naming the key
        and the shapes), in the model's order; ``[]`` when the file loads strictly.

    Raises:
        UsageError: Unknown name, or a model this library does not build yet.
    """
    if not isinstance(release, Release):
        release = find_release(release)
    with torch.device("meta"):
        built = build_release(release)
        state = {
            key: torch.empty(tuple(shape))
            for key, shape in shapes.items()
            if not release.is_known_extra(key)
        }
        converted = built.convert(state)
    own = built.model.state_dict()
    problems = [f"missing: {key} {_shape(value.shape)}" for key, value in own.items()
                if key not in converted]
    problems += [f"unexpected: {key} {_shape(value.shape)}" for key, value in converted.items()
                 if key not in own]
    problems += [
        f"wrong shape: {key}: file {_shape(value.shape)}, model {_shape(own[key].shape)}"
        for key, value in converted.items()
        if key in own and tuple(value.shape) != tuple(own[key].shape)
    ]
    return problems
