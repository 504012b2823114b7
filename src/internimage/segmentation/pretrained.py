"""The released InternImage + UperNet ADE20K models, by name, with their weights from the hub."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import UperNetForSemanticSegmentation

from internimage.errors import UsageError
from internimage.models.pretrained import dense_backbone_arguments, released_file
from internimage.segmentation.upernet import from_mmseg, upernet_from_mmseg_config

__all__ = ["ADE20K_MODELS", "SegmentationWeights", "create_segmentation_model"]


@dataclass(frozen=True)
class SegmentationWeights:
    """A released ADE20K segmentation model.

    Attributes:
        name: Name for :func:`create_segmentation_model`.
        variant: The backbone variant.
        file_name: The mmseg checkpoint in the hub repository
            :data:`~internimage.models.pretrained.HUB_REPO`.
        crop_size: Training crop (the side of the sliding window at test time).
        miou: Published ADE20K validation mIoU, single-scale and multi-scale.
        backbone_overrides: Backbone settings of the dense config that differ from the
            classifier's (InternImage-T has layer scale 1.0 there, the classifier none).
        head_channels: Width of the UPerHead.
        auxiliary_channels: Width of the FCN auxiliary head.
    """

    name: str
    variant: str
    file_name: str
    crop_size: int
    miou: tuple[float, float]
    backbone_overrides: tuple[tuple[str, Any], ...] = ()
    head_channels: int = 512
    auxiliary_channels: int = 256

    def model_config(self, num_classes: int = 150) -> dict[str, Any]:
        """The ``model`` dict of the upstream mmseg config, as :func:`from_mmseg` takes it."""
        backbone = dense_backbone_arguments(self.variant, self.backbone_overrides)
        widths = [backbone["channels"] * 2**i for i in range(4)]
        return {
            "backbone": backbone,
            "decode_head": {"in_channels": widths, "in_index": [0, 1, 2, 3],
                            "channels": self.head_channels,
                            "pool_scales": [1, 2, 3, 6], "num_classes": num_classes,
                            "align_corners": False},
            "auxiliary_head": {"in_channels": widths[2], "in_index": 2,
                               "channels": self.auxiliary_channels,
                               "num_convs": 1, "concat_input": False,
                               "num_classes": num_classes, "align_corners": False,
                               "loss_decode": {"loss_weight": 0.4}},
        }


ADE20K_MODELS: dict[str, SegmentationWeights] = {
    w.name: w
    for w in (
        SegmentationWeights("upernet_internimage_t_ade20k", "internimage_t",
                            "upernet_internimage_t_512_160k_ade20k.pth", 512, (47.9, 48.1),
                            (("layer_scale", 1.0),)),
        SegmentationWeights("upernet_internimage_s_ade20k", "internimage_s",
                            "upernet_internimage_s_512_160k_ade20k.pth", 512, (50.1, 50.9)),
        SegmentationWeights("upernet_internimage_b_ade20k", "internimage_b",
                            "upernet_internimage_b_512_160k_ade20k.pth", 512, (50.8, 51.3)),
        SegmentationWeights("upernet_internimage_l_ade20k", "internimage_l",
                            "upernet_internimage_l_640_160k_ade20k.pth", 640, (53.9, 54.1)),
        SegmentationWeights("upernet_internimage_xl_ade20k", "internimage_xl",
                            "upernet_internimage_xl_640_160k_ade20k.pth", 640, (55.0, 55.3)),
        SegmentationWeights("upernet_internimage_h_ade20k", "internimage_h",
                            "upernet_internimage_h_896_160k_ade20k.pth", 896, (59.9, 60.3)),
    )
}


def create_segmentation_model(
    name: str,
    *,
    pretrained: bool | str | os.PathLike[str] = False,
    num_classes: int = 150,
) -> UperNetForSemanticSegmentation:
    """A released ADE20K UperNet model by name (see :data:`ADE20K_MODELS`).

    Args:
        name: E.g. ``"upernet_internimage_t_ade20k"``.
        pretrained: False (random weights), True (the released mmseg checkpoint through the
            Hugging Face cache; works offline when cached), or the path of that checkpoint.
        num_classes: Classes of a model without weights (the released ones have 150).

    Raises:
        UsageError: Unknown name, or released weights asked for with another class count.
        WeightsUnavailableError: The weights are neither cached nor downloadable.
    """
    if name not in ADE20K_MODELS:
        raise UsageError(
            f"unknown segmentation model {name!r}; available: {', '.join(ADE20K_MODELS)}"
        )
    weights = ADE20K_MODELS[name]
    if pretrained is False:
        return upernet_from_mmseg_config(weights.model_config(num_classes))
    if num_classes != 150:
        raise UsageError(
            f"the released weights of {name} have 150 ADE20K classes, not {num_classes}"
        )
    if pretrained is True:
        path = released_file(weights.file_name)
    else:
        path = Path(pretrained)
    return from_mmseg(path, weights.model_config())

