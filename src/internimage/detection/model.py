"""InternImage Mask R-CNN on torchvision: the backbone with an FPN, and the mmdet semantics.

The detector is torchvision's own ``MaskRCNN``; this module supplies its backbone (InternImage's
four stage maps into torchvision's ``FeaturePyramidNetwork``, P2-P6 with P6 a stride-2 max-pool of
P5, as upstream's mmdet FPN with ``num_outs=5``) and three small components that follow mmdet
where torchvision differs by default, so that converted upstream checkpoints compute what they
were trained with:

- RoIAlign with ``aligned=True`` and adaptive sampling (``sampling_ratio=0``), levels assigned by
  mmdet's rule (``floor(log2(sqrt(area) / 56))``, clamped to the four levels);
- base anchors kept fractional (torchvision rounds them to integers);
- box deltas ``dw``/``dh`` clamped on both sides (torchvision clamps only the upper side).

What still differs from mmdet (documented in the README): torchvision drops detections smaller
than 0.01 pixel and RPN proposals smaller than 0.001 pixel (mmdet: none, and zero-size ones),
images are resized with ``torch.nn.functional.interpolate`` rather than OpenCV, masks are pasted
by torchvision's own routine, and the training losses are torchvision's (smooth L1 with
beta 1/9 for boxes where mmdet uses L1).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.models.convnext import LayerNorm2d
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from internimage.errors import ConfigError
from internimage.models.internimage import InternImage, InternImageFeatures

__all__ = [
    "FPN_STRIDES",
    "AlignedMultiScaleRoIAlign",
    "DetectorHeads",
    "DetectorSettings",
    "FractionalAnchorGenerator",
    "InternImageFPN",
    "SymmetricClampBoxCoder",
    "build_mask_rcnn",
    "detection_param_groups",
    "mask_head_and_predictor",
    "two_stage_detector",
]

#: Strides of the five FPN outputs P2..P6.
FPN_STRIDES = (4, 8, 16, 32, 64)
#: Names of the FPN outputs, as torchvision's detectors key them.
FPN_NAMES = ("0", "1", "2", "3", "pool")
#: Largest ``|dw|``, ``|dh|`` of a decoded box: mmdet's ``log(1000 / 16)``.
BOX_CLIP = math.log(1000.0 / 16)


@dataclass(frozen=True)
class DetectorHeads:
    """The architecture of the detector around the backbone (upstream's COCO Mask R-CNN by default).

    Attributes:
        fpn_channels: Width of the FPN outputs (and of the RPN conv and the RoI features).
        anchor_scale: Anchor side in units of the level's stride (8: 32..512 pixels on P2..P6).
        anchor_ratios: Anchor aspect ratios (height / width) per position.
        box_fc_channels: Width of the two fully connected layers of the box head.
        mask_convs: 3x3 convolutions of the mask head.
        mask_channels: Their width.
        fpn_norm: ``None`` (mmdet's FPN: convolutions with bias, no norm) or ``"layer_norm"``
            (upstream's ``FPN_vitdet`` of the FlashInternImage detectors: convolutions without
            bias, each followed by a LayerNorm over channels, eps 1e-5).
    """

    fpn_channels: int = 256
    anchor_scale: float = 8.0
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    box_fc_channels: int = 1024
    mask_convs: int = 4
    mask_channels: int = 256
    fpn_norm: str | None = None

    def __post_init__(self) -> None:
        if self.fpn_norm not in FPN_NORMS:
            raise ConfigError(f"fpn_norm must be one of {FPN_NORMS}, got {self.fpn_norm!r}")
        for name in ("fpn_channels", "box_fc_channels", "mask_convs", "mask_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.anchor_scale <= 0 or not self.anchor_ratios or min(self.anchor_ratios) <= 0:
            raise ConfigError(
                f"anchors need a positive scale and ratios, got scale {self.anchor_scale} and "
                f"ratios {self.anchor_ratios}"
            )


@dataclass(frozen=True)
class DetectorSettings:
    """How the detector resizes, proposes, samples and filters (not part of its weights).

    The defaults are upstream's COCO settings (mmdet's ``train_cfg`` / ``test_cfg`` of the
    Mask R-CNN configs).

    Attributes:
        min_size: Shorter image side after resizing (keeping the aspect ratio).
        max_size: Upper limit of the longer side.
        image_mean: Per-channel mean of images scaled to [0, 1].
        image_std: Per-channel standard deviation.
        rpn_pre_nms_train: Proposals per level before NMS in training.
        rpn_post_nms_train: Proposals per image after NMS in training.
        rpn_pre_nms_test: Same at test time.
        rpn_post_nms_test: Same at test time.
        rpn_nms: IoU threshold of the RPN's NMS.
        rpn_batch: Anchors sampled per image for the RPN loss.
        rpn_positive_fraction: Share of positives among them.
        roi_batch: Proposals sampled per image for the box and mask losses.
        roi_positive_fraction: Share of positives among them.
        score_threshold: Detections scoring less are dropped.
        nms: IoU threshold of the per-class NMS of detections.
        detections_per_image: Detections kept per image.
    """

    min_size: int = 800
    max_size: int = 1333
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    rpn_pre_nms_train: int = 2000
    rpn_post_nms_train: int = 1000
    rpn_pre_nms_test: int = 1000
    rpn_post_nms_test: int = 1000
    rpn_nms: float = 0.7
    rpn_batch: int = 256
    rpn_positive_fraction: float = 0.5
    roi_batch: int = 512
    roi_positive_fraction: float = 0.25
    score_threshold: float = 0.05
    nms: float = 0.5
    detections_per_image: int = 100

    def __post_init__(self) -> None:
        if not 0 < self.min_size <= self.max_size:
            raise ConfigError(
                f"need 0 < min_size <= max_size, got {self.min_size} and {self.max_size}"
            )
        for name in ("rpn_pre_nms_train", "rpn_post_nms_train", "rpn_pre_nms_test",
                     "rpn_post_nms_test", "rpn_batch", "roi_batch", "detections_per_image"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("rpn_nms", "nms", "rpn_positive_fraction", "roi_positive_fraction",
                     "score_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")


#: Norms of the FPN's convolutions: none (mmdet's FPN) or LayerNorm over channels (FPN_vitdet).
FPN_NORMS = (None, "layer_norm")


def _channel_layer_norm(channels: int) -> nn.Module:
    """LayerNorm over the channels of an NCHW map, eps 1e-5 (upstream's FPN_vitdet)."""
    return LayerNorm2d(channels, eps=1e-5)


class InternImageFPN(nn.Module):
    """InternImage's four stage maps through torchvision's FPN: five maps P2..P6.

    ``body`` holds the backbone with the classifier's module names (``patch_embed``, ``levels``),
    ``fpn`` torchvision's ``FeaturePyramidNetwork`` (``inner_blocks`` = mmdet's lateral convs,
    ``layer_blocks`` = its output convs); ``out_channels`` is what torchvision's detectors read.

    Args:
        body: The backbone, returning all four stages.
        out_channels: FPN width.
        norm: See :attr:`DetectorHeads.fpn_norm`.
    """

    def __init__(
        self, body: InternImageFeatures, out_channels: int, *, norm: str | None = None
    ) -> None:
        super().__init__()
        if body.out_indices != (0, 1, 2, 3):
            raise ConfigError(
                f"the FPN needs all four stages of the backbone, got out_indices {body.out_indices}"
            )
        if norm not in FPN_NORMS:
            raise ConfigError(f"FPN norm must be one of {FPN_NORMS}, got {norm!r}")
        self.body = body
        # With a norm, torchvision's FPN drops the convolutions' biases, as FPN_vitdet has them.
        self.fpn = FeaturePyramidNetwork(
            [info["num_chs"] for info in body.feature_info], out_channels,
            extra_blocks=LastLevelMaxPool(),
            norm_layer=_channel_layer_norm if norm == "layer_norm" else None,
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """``[N, 3, H, W]`` -> ``{"0": P2, "1": P3, "2": P4, "3": P5, "pool": P6}``, each
        ``[N, out_channels, H / s, W / s]`` for s in 4, 8, 16, 32, 64."""
        maps = self.body(x)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """RoIAlign over the FPN levels as mmdet's ``SingleRoIExtractor`` computes it.

    Each box is pooled from level ``floor(log2(sqrt(w * h) / finest_scale + 1e-6))`` (clamped to
    the levels given) with ``aligned=True`` (pixel centres at half-integers) and
    ``sampling_ratio`` points per bin (0: adaptive, ``ceil(box side / output side)``). The call
    signature is that of torchvision's ``MultiScaleRoIAlign``, whose subclass it is because
    torchvision's ``MaskRCNN`` accepts only those.

    Args:
        featmap_names: The maps to pool from, finest first.
        strides: Their strides.
        output_size: Side of the pooled features.
        sampling_ratio: Sampling points per bin and axis (0: adaptive).
        finest_scale: Box side that maps to the boundary between the first and second level.
    """

    def __init__(
        self,
        featmap_names: Sequence[str],
        strides: Sequence[int],
        output_size: int,
        *,
        sampling_ratio: int = 0,
        finest_scale: float = 56.0,
    ) -> None:
        if len(featmap_names) != len(strides) or not featmap_names:
            raise ConfigError(
                f"one stride per feature map needed, got {list(featmap_names)} and {list(strides)}"
            )
        super().__init__(list(featmap_names), int(output_size), int(sampling_ratio))
        self.strides = [int(s) for s in strides]
        self.finest_scale = float(finest_scale)

    def levels(self, boxes: torch.Tensor) -> torch.Tensor:
        """``[K, 4]`` boxes (x1, y1, x2, y2) -> ``[K]`` level indices."""
        scale = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
        level = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return level.clamp(0, len(self.strides) - 1).long()

    def forward(
        self,
        x: dict[str, torch.Tensor],
        boxes: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """Pool ``[K, C, S, S]`` features for the boxes of every image (image order, then box
        order), ``boxes[i]`` being ``[K_i, 4]`` in input-image pixels."""
        del image_shapes  # the strides are known; torchvision infers them from the sizes
        features = [x[name] for name in self.featmap_names]
        all_boxes = torch.cat(boxes)
        rois = torch.cat([
            torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)
        ])  # [K, 5]: image index, x1, y1, x2, y2
        levels = self.levels(all_boxes)
        first = features[0]
        out = first.new_zeros((rois.shape[0], first.shape[1], *self.output_size))
        for level, (feature, stride) in enumerate(zip(features, self.strides, strict=True)):
            index = torch.nonzero(levels == level).squeeze(1)
            if index.numel() == 0:
                continue
            pooled = roi_align(
                feature, rois[index], self.output_size, spatial_scale=1.0 / stride,
                sampling_ratio=self.sampling_ratio, aligned=True,
            )
            # Under autocast the levels may come out in different dtypes.
            out[index] = pooled.to(out.dtype)
        return out


class FractionalAnchorGenerator(AnchorGenerator):
    """torchvision's anchor generator with the base anchors left fractional, as mmdet has them
    (torchvision rounds the corners of each base anchor to integers), and with the levels'
    strides fixed when given.

    torchvision infers a level's stride as ``padded image side // map side``, which is wrong
    whenever the padded side is not a multiple of the stride (a 160-pixel-wide batch has a
    3-wide P6, and 160 // 3 = 53, not 64); mmdet places the anchors at the true strides.

    Args:
        sizes: Anchor sizes per level (torchvision's argument).
        aspect_ratios: Aspect ratios per level (torchvision's argument).
        strides: The stride of each level; ``None``: inferred, as torchvision does.
    """

    def __init__(
        self,
        sizes: tuple[tuple[float, ...], ...],
        aspect_ratios: tuple[tuple[float, ...], ...],
        strides: Sequence[int] | None = None,
    ) -> None:
        super().__init__(sizes, aspect_ratios)
        if strides is not None and len(strides) != len(sizes):
            raise ConfigError(f"one stride per level needed, got {list(strides)} for "
                              f"{len(sizes)} levels")
        self.strides = None if strides is None else [int(s) for s in strides]

    def forward(
        self, image_list: ImageList, feature_maps: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Anchors of every image, ``[sum_l H_l * W_l * A, 4]`` each (level, row, column,
        anchor order: the order of the RPN head's flattened outputs)."""
        if self.strides is None:
            return super().forward(image_list, feature_maps)
        grid_sizes = [list(m.shape[-2:]) for m in feature_maps]
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        self.set_cell_anchors(dtype, device)
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors for _ in image_list.image_sizes]

    def generate_anchors(
        self,
        scales: list[int],
        aspect_ratios: list[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device = torch.device("cpu"),  # noqa: B008 (torchvision's signature)
    ) -> torch.Tensor:
        sizes = torch.as_tensor(scales, dtype=dtype, device=device)
        ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
        h_ratios = ratios.sqrt()
        w_ratios = 1.0 / h_ratios
        # Ratios outer, sizes inner: the channel order of the RPN head in both libraries.
        ws = (w_ratios[:, None] * sizes[None, :]).reshape(-1)
        hs = (h_ratios[:, None] * sizes[None, :]).reshape(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2


class SymmetricClampBoxCoder(BoxCoder):
    """torchvision's box coder with ``dw``/``dh`` clamped to ``[-clip, clip]`` before the
    exponential, as mmdet's ``DeltaXYWHBBoxCoder`` does (torchvision clamps the upper side only,
    so a large negative delta shrinks a box further than mmdet lets it)."""

    def decode_single(self, rel_codes: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        wx, wy, ww, wh = self.weights
        clip = self.bbox_xform_clip
        codes = rel_codes.clone()
        codes[:, 2::4] = (rel_codes[:, 2::4] / ww).clamp(-clip, clip) * ww
        codes[:, 3::4] = (rel_codes[:, 3::4] / wh).clamp(-clip, clip) * wh
        return super().decode_single(codes, boxes)


def build_mask_rcnn(
    backbone: InternImage | InternImageFeatures,
    *,
    num_classes: int,
    heads: DetectorHeads | None = None,
    settings: DetectorSettings | None = None,
    frozen_stages: int = -1,
) -> MaskRCNN:
    """torchvision's ``MaskRCNN`` over an InternImage backbone with an FPN.

    Args:
        backbone: An InternImage (its classifier head is not used) or its features.
        num_classes: Object classes, without the background; the torchvision model has
            ``num_classes + 1`` outputs with the background first.
        heads: Widths of the FPN and the heads (default: upstream's COCO ones).
        settings: Resizing, proposal, sampling and filtering settings (default: upstream's COCO
            ones).
        frozen_stages: Stem and stages kept frozen (in eval mode, no gradients): -1 none, 0 the
            stem, k the stem and the first k stages (upstream's ``frozen_stages``).

    Returns:
        The detector in training mode. Called as torchvision documents it: ``model(images)`` in
        eval mode gives a list of ``{"boxes", "labels", "scores", "masks"}``, ``model(images,
        targets)`` in training mode the loss dict.

    Raises:
        ConfigError: ``num_classes < 1``.
    """
    width = (heads or DetectorHeads()).fpn_channels
    fc = (heads or DetectorHeads()).box_fc_channels
    return two_stage_detector(
        backbone, num_classes=num_classes, heads=heads, settings=settings,
        frozen_stages=frozen_stages,
        box_head=TwoMLPHead(width * 7 * 7, fc),
        box_predictor=FastRCNNPredictor(fc, num_classes + 1),
    )


def mask_head_and_predictor(
    heads: DetectorHeads, num_classes: int
) -> tuple[MaskRCNNHeads, MaskRCNNPredictor]:
    """mmdet's ``FCNMaskHead`` from torchvision's parts: ``mask_convs`` 3x3 convolutions with
    ReLU, a stride-2 deconvolution with ReLU and a 1x1 convolution to ``num_classes + 1``
    logits (background first), ``[K, C, 14, 14]`` -> ``[K, num_classes + 1, 28, 28]``."""
    return (
        MaskRCNNHeads(heads.fpn_channels, [heads.mask_channels] * heads.mask_convs, dilation=1),
        MaskRCNNPredictor(heads.mask_channels, heads.mask_channels, num_classes + 1),
    )


def two_stage_detector(
    backbone: InternImage | InternImageFeatures,
    *,
    num_classes: int,
    heads: DetectorHeads | None,
    settings: DetectorSettings | None,
    frozen_stages: int,
    box_head: nn.Module,
    box_predictor: nn.Module,
) -> MaskRCNN:
    """The parts every detector here shares: backbone and FPN, mmdet's anchors, RPN, RoI
    pooling and box coders, and a mask head; the box head is the caller's.

    See :func:`build_mask_rcnn` for the arguments; ``box_head`` maps ``[K, C, 7, 7]`` pooled
    features to ``[K, F]``, and ``box_predictor`` those to class logits and box deltas.
    """
    if num_classes < 1:
        raise ConfigError(f"a detector needs at least one object class, got {num_classes}")
    heads = heads or DetectorHeads()
    settings = settings or DetectorSettings()
    body = backbone if isinstance(backbone, InternImageFeatures) else InternImageFeatures(backbone)
    body.frozen_stages = frozen_stages
    fpn = InternImageFPN(body, heads.fpn_channels, norm=heads.fpn_norm)
    ratios = tuple(float(r) for r in heads.anchor_ratios)
    anchors = FractionalAnchorGenerator(
        sizes=tuple((heads.anchor_scale * s,) for s in FPN_STRIDES),
        aspect_ratios=(ratios,) * len(FPN_STRIDES),
        strides=FPN_STRIDES,
    )
    mask_head, mask_predictor = mask_head_and_predictor(heads, num_classes)
    model = MaskRCNN(
        fpn,
        num_classes=None,
        min_size=settings.min_size,
        max_size=settings.max_size,
        image_mean=list(settings.image_mean),
        image_std=list(settings.image_std),
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(heads.fpn_channels, len(ratios)),
        rpn_pre_nms_top_n_train=settings.rpn_pre_nms_train,
        rpn_pre_nms_top_n_test=settings.rpn_pre_nms_test,
        rpn_post_nms_top_n_train=settings.rpn_post_nms_train,
        rpn_post_nms_top_n_test=settings.rpn_post_nms_test,
        rpn_nms_thresh=settings.rpn_nms,
        rpn_batch_size_per_image=settings.rpn_batch,
        rpn_positive_fraction=settings.rpn_positive_fraction,
        box_roi_pool=AlignedMultiScaleRoIAlign(FPN_NAMES[:4], FPN_STRIDES[:4], 7),
        box_head=box_head,
        box_predictor=box_predictor,
        box_score_thresh=settings.score_threshold,
        box_nms_thresh=settings.nms,
        box_detections_per_img=settings.detections_per_image,
        box_batch_size_per_image=settings.roi_batch,
        box_positive_fraction=settings.roi_positive_fraction,
        mask_roi_pool=AlignedMultiScaleRoIAlign(FPN_NAMES[:4], FPN_STRIDES[:4], 14),
        mask_head=mask_head,
        mask_predictor=mask_predictor,
    )
    model.rpn.box_coder = SymmetricClampBoxCoder((1.0, 1.0, 1.0, 1.0), BOX_CLIP)
    model.roi_heads.box_coder = SymmetricClampBoxCoder((10.0, 10.0, 5.0, 5.0), BOX_CLIP)
    return model


def detection_param_groups(
    model: MaskRCNN, weight_decay: float, *, layer_decay: float | None = None
) -> list[dict[str, Any]]:
    """Optimizer groups: the backbone's (layer-wise decay as upstream computes it, see
    ``InternImage.param_groups``), then FPN and heads at the top rate, without weight decay on
    their 1-D parameters. Frozen parameters are left out."""
    from internimage.train.tasks import groups_with_heads

    return groups_with_heads(model, model.backbone.body, weight_decay, layer_decay=layer_decay)
