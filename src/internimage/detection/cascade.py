"""Cascade Mask R-CNN on torchvision's parts, as upstream's mmdet ``CascadeRCNN`` tests.

The detector is the Mask R-CNN of :func:`~internimage.detection.model.build_mask_rcnn`
(backbone, FPN, RPN, aligned RoI pooling) with :class:`CascadeRoIHeads` in place of
torchvision's ``RoIHeads``: three box stages, each torchvision's ``FastRCNNConvFCHead``
(mmdet's ``ConvFCBBoxHead``: 3x3 convolutions without bias, each with BatchNorm and ReLU, then
one fully connected layer with ReLU) and ``FastRCNNPredictor`` (class-specific deltas), with
box coders of shrinking standard deviations; and one mask head per stage (the Mask R-CNN
one). At test time (mmdet's ``CascadeRoIHead.simple_test``) each stage refines the previous
stage's boxes with the deltas of its best foreground class, the scores are the softmax of the
mean of the stages' logits, the boxes the last stage's, and the masks the mean of the three
mask heads' sigmoids (:mod:`internimage.detection.inference`).

Training the cascade (per-stage assignment and sampling, GIoU losses) is not available yet.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor

from internimage.detection.inference import (
    BoxStage,
    MaskStage,
    average_mask_probabilities,
    detections_from_stages,
    run_box_stages,
)
from internimage.detection.model import (
    BOX_CLIP,
    DetectorHeads,
    DetectorSettings,
    SymmetricClampBoxCoder,
    mask_head_and_predictor,
    two_stage_detector,
)
from internimage.errors import ConfigError, UsageError
from internimage.models.internimage import InternImage, InternImageFeatures

__all__ = ["CASCADE_STAGE_STDS", "CascadeRoIHeads", "build_cascade_mask_rcnn"]

#: mmdet's box coder standard deviations of upstream's three cascade stages.
CASCADE_STAGE_STDS: tuple[tuple[float, float, float, float], ...] = (
    (0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067),
)


def stage_box_coder(stds: Sequence[float]) -> SymmetricClampBoxCoder:
    """mmdet's ``DeltaXYWHBBoxCoder`` with zero means and ``stds`` (torchvision's weights are
    their inverses)."""
    if len(stds) != 4 or min(stds) <= 0:
        raise ConfigError(f"box coder stds must be 4 positive numbers, got {list(stds)}")
    return SymmetricClampBoxCoder(tuple(1.0 / float(s) for s in stds), BOX_CLIP)


class CascadeRoIHeads(nn.Module):
    """The RoI heads of Cascade Mask R-CNN, called as torchvision's ``RoIHeads``.

    Args:
        box_roi_pool: RoI pooling of the box heads (``[K, C, 7, 7]``).
        mask_roi_pool: RoI pooling of the mask heads (``[K, C, 14, 14]``).
        box_heads: Per stage, pooled features -> ``[K, F]``.
        box_predictors: Per stage, ``[K, F]`` -> class logits ``[K, classes + 1]`` and deltas
            ``[K, 4 (classes + 1)]`` (background first).
        box_coders: Per stage, the coder of its deltas.
        mask_heads: Per mask head, pooled features -> mask features.
        mask_predictors: Per mask head, -> ``[K, classes + 1, 28, 28]`` logits.
        score_thresh: Detections scoring at most this are dropped.
        nms_thresh: IoU of the class-wise NMS.
        detections_per_img: Detections kept per image.
    """

    def __init__(
        self,
        box_roi_pool: nn.Module,
        mask_roi_pool: nn.Module,
        box_heads: Sequence[nn.Module],
        box_predictors: Sequence[nn.Module],
        box_coders: Sequence[SymmetricClampBoxCoder],
        mask_heads: Sequence[nn.Module],
        mask_predictors: Sequence[nn.Module],
        *,
        score_thresh: float,
        nms_thresh: float,
        detections_per_img: int,
    ) -> None:
        super().__init__()
        if not box_heads or not (len(box_heads) == len(box_predictors) == len(box_coders)):
            raise ConfigError(
                f"one head, predictor and coder per stage needed, got {len(box_heads)}, "
                f"{len(box_predictors)} and {len(box_coders)}")
        if not mask_heads or len(mask_heads) != len(mask_predictors):
            raise ConfigError(f"one predictor per mask head needed, got {len(mask_heads)} and "
                              f"{len(mask_predictors)}")
        self.box_roi_pool = box_roi_pool
        self.mask_roi_pool = mask_roi_pool
        self.box_heads = nn.ModuleList(box_heads)
        self.box_predictors = nn.ModuleList(box_predictors)
        self.box_coders = list(box_coders)
        self.mask_heads = nn.ModuleList(mask_heads)
        self.mask_predictors = nn.ModuleList(mask_predictors)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img

    def box_stages(self) -> list[BoxStage]:
        """``(head, predictor, coder)`` of each box stage."""
        return list(zip(self.box_heads, self.box_predictors, self.box_coders, strict=True))

    def mask_stages(self) -> list[MaskStage]:
        """``(head, predictor)`` of each mask head."""
        return list(zip(self.mask_heads, self.mask_predictors, strict=True))

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """Detections in input pixels, as torchvision's ``RoIHeads`` returns them: per image
        ``boxes`` ``[D, 4]``, ``labels`` ``[D]`` (1-based), ``scores`` ``[D]`` and ``masks``
        ``[D, 1, 28, 28]`` (probabilities of the detected class, which torchvision's
        transform pastes); no losses.

        Raises:
            UsageError: In training mode (cascade training is not available yet).
        """
        del targets  # only training uses them
        if self.training:
            raise UsageError("training Cascade Mask R-CNN is not available yet: its per-stage "
                             "sampling and losses are not implemented; use model.eval() for "
                             "inference")
        stages = self.box_stages()
        outputs = run_box_stages(self.box_roi_pool, stages, features, proposals, image_shapes)
        results = detections_from_stages(
            outputs, stages[-1][2], image_shapes, score_threshold=self.score_thresh,
            nms_threshold=self.nms_thresh, max_detections=self.detections_per_img)
        masks = average_mask_probabilities(
            self.mask_roi_pool, self.mask_stages(), features, [r["boxes"] for r in results],
            [r["labels"] for r in results], image_shapes)
        for result, mask in zip(results, masks, strict=True):
            result["masks"] = mask[:, None]
        return results, {}


def build_cascade_mask_rcnn(
    backbone: InternImage | InternImageFeatures,
    *,
    num_classes: int,
    heads: DetectorHeads | None = None,
    settings: DetectorSettings | None = None,
    stage_stds: Sequence[Sequence[float]] = CASCADE_STAGE_STDS,
    box_convs: int = 4,
    box_conv_channels: int | None = None,
    frozen_stages: int = -1,
) -> MaskRCNN:
    """torchvision's ``MaskRCNN`` with the cascade's RoI heads over an InternImage backbone.

    Args:
        backbone: An InternImage or FlashInternImage (its classifier head is not used) or its
            features.
        num_classes: Object classes, without the background.
        heads: FPN (``fpn_norm`` picks upstream's FPN_vitdet for FlashInternImage), anchors,
            the box heads' fully connected width and the mask heads (default: upstream's).
        settings: Resizing, proposal and filtering settings (default: upstream's COCO ones).
        stage_stds: The box coder standard deviations of each stage (their count is the number
            of stages and of mask heads).
        box_convs: 3x3 convolutions (with BatchNorm and ReLU) of each box head.
        box_conv_channels: Their width (default: the FPN's).
        frozen_stages: See :func:`~internimage.detection.model.build_mask_rcnn`.

    Returns:
        The detector, in training mode, whose forward works in eval mode only (like
        torchvision's: ``model(images)`` -> detections in original pixels).

    Raises:
        ConfigError: No stage, or a size below 1.
    """
    heads = heads or DetectorHeads()
    if not stage_stds:
        raise ConfigError("a cascade needs at least one stage")
    if box_convs < 0 or (box_conv_channels is not None and box_conv_channels < 1):
        raise ConfigError(f"box head convolutions: need count >= 0 and width >= 1, got "
                          f"{box_convs} and {box_conv_channels}")
    conv_width = heads.fpn_channels if box_conv_channels is None else box_conv_channels
    box_heads = [
        FastRCNNConvFCHead((heads.fpn_channels, 7, 7), [conv_width] * box_convs,
                           [heads.box_fc_channels], norm_layer=nn.BatchNorm2d)
        for _ in stage_stds
    ]
    box_predictors = [FastRCNNPredictor(heads.box_fc_channels, num_classes + 1)
                      for _ in stage_stds]
    model = two_stage_detector(
        backbone, num_classes=num_classes, heads=heads, settings=settings,
        frozen_stages=frozen_stages, box_head=box_heads[0], box_predictor=box_predictors[0])
    masks = [(model.roi_heads.mask_head, model.roi_heads.mask_predictor)]
    masks += [mask_head_and_predictor(heads, num_classes) for _ in stage_stds[1:]]
    plain = model.roi_heads
    model.roi_heads = CascadeRoIHeads(
        plain.box_roi_pool, plain.mask_roi_pool, box_heads, box_predictors,
        [stage_box_coder(stds) for stds in stage_stds],
        [head for head, _ in masks], [predictor for _, predictor in masks],
        score_thresh=plain.score_thresh, nms_thresh=plain.nms_thresh,
        detections_per_img=plain.detections_per_img,
    )
    return model
