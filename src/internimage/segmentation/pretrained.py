"""The released InternImage + UperNet models, by name, with their weights from the hub.

Which files exist, and what each was trained on, is the catalogue's
(:mod:`internimage.catalog`); this module builds the UperNet of a release from upstream's mmseg
settings and loads its checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn
from transformers import Mask2FormerForUniversalSegmentation

from internimage.catalog.builders import (
    BuiltModel,
    build_release,
    dense_backbone,
    load_release_weights,
)
from internimage.catalog.table import Release, find_release
from internimage.errors import UsageError
from internimage.models.hf import InternImageHFConfig
from internimage.segmentation.mask2former import convert_mask2former_state_dict, mask2former_config
from internimage.segmentation.upernet import convert_mmseg_state_dict, upernet_from_mmseg_config

__all__ = ["create_segmentation_model", "find_segmentation_release", "mask2former_for_release",
           "upernet_for_release", "upernet_model_config"]

# Upstream's UperNet configs: UPerHead of 512 channels over all four stages, FCN auxiliary head
# of 256 channels (one conv) on stage 3 with loss weight 0.4.
_HEAD_CHANNELS = 512
_AUXILIARY_CHANNELS = 256


def upernet_model_config(release: Release, num_classes: int) -> dict[str, Any]:
    """The ``model`` dict of the release's upstream mmseg config, as :func:`from_mmseg`
    takes it."""
    backbone = dense_backbone(release)
    widths = [backbone["channels"] * 2**i for i in range(4)]
    return {
        "backbone": backbone,
        "decode_head": {"in_channels": widths, "in_index": [0, 1, 2, 3],
                        "channels": _HEAD_CHANNELS, "pool_scales": [1, 2, 3, 6],
                        "num_classes": num_classes, "align_corners": False},
        "auxiliary_head": {"in_channels": widths[2], "in_index": 2,
                           "channels": _AUXILIARY_CHANNELS, "num_convs": 1,
                           "concat_input": False, "num_classes": num_classes,
                           "align_corners": False, "loss_decode": {"loss_weight": 0.4}},
    }


def upernet_for_release(release: Release, num_classes: int) -> BuiltModel:
    """The UperNet of an upstream UperNet release (random weights) and its key conversion."""
    return BuiltModel(upernet_from_mmseg_config(upernet_model_config(release, num_classes)),
                      convert_mmseg_state_dict)


def mask2former_for_release(release: Release, num_classes: int) -> BuiltModel:
    """The transformers Mask2Former of an upstream Mask2Former release (random weights) and its
    key conversion; the head's sizes are the release's (:attr:`Release.head`)."""
    backbone = InternImageHFConfig(**dense_backbone(release), out_indices=[0, 1, 2, 3])
    config = mask2former_config(backbone, num_classes=num_classes, **release.head_arguments())
    return BuiltModel(Mask2FormerForUniversalSegmentation(config),
                      convert_mask2former_state_dict)


def find_segmentation_release(name: str) -> Release:
    """The released segmentation model called ``name`` (name, file name or alias).

    Raises:
        UsageError: No such release, not a segmentation model, or one not built yet.
    """
    release = find_release(name)
    if release.task != "semantic_segmentation":
        raise UsageError(f"{release.name} is a {release.task.replace('_', ' ')} model, not a "
                         f"semantic segmentation one")
    if not release.buildable:
        build_release(release)  # raises, saying so
    return release


def create_segmentation_model(
    name: str,
    *,
    pretrained: bool | str | os.PathLike[str] = False,
    num_classes: int | None = None,
) -> nn.Module:
    """A released segmentation model by name (``internimage list --task
    semantic_segmentation``): transformers' ``UperNetForSemanticSegmentation`` (its
    ``.logits`` at the input size) or ``Mask2FormerForUniversalSegmentation`` (upstream's
    semantic output: :func:`~internimage.segmentation.mask2former.mask2former_semantic_logits`).

    Args:
        name: The release's name, file name or alias, e.g.
            ``"upernet_internimage_t_512_160k_ade20k"`` or ``"upernet_internimage_t_ade20k"``.
        pretrained: False (random weights), True (the released mmseg checkpoint through the
            Hugging Face cache; works offline when cached), or the path of that checkpoint.
        num_classes: Classes of a model without weights (default: the release's).

    Returns:
        The model, in eval mode when weights were loaded.

    Raises:
        UsageError: Unknown name, a model not built yet, or released weights asked for with
            another class count.
        WeightsUnavailableError: The weights are neither cached nor downloadable.
    """
    release = find_segmentation_release(name)
    if pretrained is False:
        return build_release(release, num_classes).model
    if num_classes not in (None, release.num_classes):
        raise UsageError(
            f"the released weights of {release.name} have {release.num_classes} outputs, not "
            f"{num_classes}"
        )
    built = build_release(release)
    load_release_weights(built, release, pretrained)
    return built.model.eval()
