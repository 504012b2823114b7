"""Which model each released checkpoint builds, and how its keys become the model's.

A builder takes a :class:`~internimage.catalog.table.Release` and a class count and returns the
model (random weights, on the current default device: build under ``torch.device("meta")`` to
allocate nothing) and the function that turns the file's state dict into the model's. The task
packages define the builders of their methods; this table only names them, so that importing
the catalogue needs none of the task packages' dependencies (transformers, torchvision).
A release whose builder is not listed here is not built yet.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from internimage.catalog.table import Release

__all__ = ["BUILDERS", "BuiltModel", "build_classifier", "build_release", "dense_backbone",
           "load_release_weights"]

#: Converts a checkpoint's state dict (the file's names) into the model's.
Converter = Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class BuiltModel:
    """A model built for a release.

    Attributes:
        model: The model, with random weights.
        convert: The file's state dict -> the model's.
    """

    model: nn.Module
    convert: Converter


#: ``Release.builder`` -> ``"module:function"`` of the function that builds it.
BUILDERS: dict[str, str] = {
    "internimage/classifier": "internimage.catalog.builders:build_classifier",
    "internimage/upernet": "internimage.segmentation.pretrained:upernet_for_release",
    "internimage/mask_rcnn": "internimage.detection.pretrained:mask_rcnn_for_release",
    "flash_internimage/classifier": "internimage.catalog.builders:build_classifier",
    "flash_internimage/upernet": "internimage.segmentation.pretrained:upernet_for_release",
    "flash_internimage/mask_rcnn": "internimage.detection.pretrained:mask_rcnn_for_release",
    "internimage/mask2former": "internimage.segmentation.pretrained:mask2former_for_release",
    "flash_internimage/mask2former": "internimage.segmentation.pretrained:mask2former_for_release",
    "internimage/cascade_mask_rcnn":
        "internimage.detection.pretrained:cascade_mask_rcnn_for_release",
    "flash_internimage/cascade_mask_rcnn":
        "internimage.detection.pretrained:cascade_mask_rcnn_for_release",
}


def build_release(release: Release, num_classes: int | None = None) -> BuiltModel:
    """The model of ``release`` (random weights) and its key conversion.

    Args:
        release: The released checkpoint.
        num_classes: Outputs of the model's classifier (default: the file's).

    Raises:
        UsageError: This library does not build that model yet.
    """
    from internimage.errors import UsageError

    target = BUILDERS.get(release.builder)
    if target is None:
        from internimage.catalog.table import describe_model

        raise UsageError(
            f"{release.name} is {describe_model(release)}, which this library cannot build yet "
            f"(`internimage list --built` shows those it can)"
        )
    module, function = target.split(":")
    build: Callable[[Release, int], BuiltModel] = getattr(importlib.import_module(module),
                                                          function)
    return build(release, release.num_classes if num_classes is None else num_classes)


def dense_backbone(release: Release) -> dict[str, Any]:
    """Upstream ``InternImage(...)`` arguments of a dense release's backbone, without its
    training settings (stochastic depth) and with all four stages out.

    Raises:
        ValueError: The release's backbone returns other stages than the four.
    """
    arguments = release.backbone_arguments()
    out = arguments.pop("out_indices", [0, 1, 2, 3])
    if list(out) != [0, 1, 2, 3]:
        raise ValueError(f"{release.name}: backbone out_indices {out}, expected [0, 1, 2, 3]")
    arguments["drop_path_rate"] = 0.0
    return arguments


def build_classifier(release: Release, num_classes: int) -> BuiltModel:
    """An InternImage or FlashInternImage classifier from the release's upstream arguments."""
    from internimage.models.checkpoint import extract_state_dict
    from internimage.models.flash_internimage import build_upstream_backbone

    arguments = {**release.backbone_arguments(), "num_classes": num_classes,
                 "drop_path_rate": 0.0}
    return BuiltModel(build_upstream_backbone(arguments), extract_state_dict)


def load_release_weights(
    built: BuiltModel, release: Release, source: bool | str | os.PathLike[str]
) -> None:
    """Load a released file into the model built for it, strictly, after converting its keys.

    Args:
        built: The model of ``release`` (:func:`build_release`).
        release: The release.
        source: True for the released file through the Hugging Face cache (downloaded once),
            or the path of a local copy.

    Raises:
        CheckpointMismatchError: A key is missing, unexpected or wrongly shaped (all listed).
        CheckpointFileError: The file is not a readable checkpoint.
        WeightsUnavailableError: The file is neither cached nor downloadable.
    """
    from internimage.catalog.hub import release_file
    from internimage.models.checkpoint import (
        load_converted_strictly,
        read_checkpoint,
        weights_container,
    )

    path = release_file(release) if source is True else os.fspath(source)
    state = {k: v for k, v in weights_container(read_checkpoint(path)).items()
             if not release.is_known_extra(k)}
    load_converted_strictly(built.model, {"state_dict": state}, built.convert,
                            source=f"{path} ({release.name})")
