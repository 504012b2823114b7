"""mmdet's test-time computation (``simple_test``) on the parts of this library's detectors.

torchvision's ``MaskRCNN.forward`` resizes and normalises images itself, drops tiny boxes,
clips and filters in its own order and pastes masks its own way. Upstream's numbers come from
mmdet's ``simple_test``, which these functions follow step for step on the model's modules:

- proposals (``RPNHead``): per image and level the ``nms_pre`` best anchors by sigmoid score,
  decoded and clipped to the image, boxes without area dropped, NMS per level, the best
  ``max_per_img`` kept;
- box stages (one for Mask R-CNN, three for Cascade Mask R-CNN): each pools its boxes and
  predicts class logits and class-specific deltas; between stages the boxes are regressed with
  the deltas of the argmax foreground class and clipped to the image;
- detections: the softmax of the mean of the stages' logits, the last stage's deltas on its
  input boxes (clipped), divided by the scale factor, then mmdet's ``multiclass_nms`` (score
  above the threshold, class-wise NMS, the best ``max_per_img``);
- masks: every mask head on the detected boxes in input pixels, sigmoids averaged, the
  detected class's channel pasted into the original image (bilinear ``grid_sample`` inside the
  box's pixel window widened by one pixel) and thresholded at 0.5.

NMS is mmcv's ``batched_nms``: class offsets added to the boxes (below 10000 boxes), so that
the IoU tests round as upstream's do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import batched_nms, clip_boxes_to_image, nms

from internimage.errors import UsageError

__all__ = [
    "StageOutput",
    "average_mask_probabilities",
    "detect_preprocessed",
    "detections_from_stages",
    "mmcv_batched_nms",
    "paste_masks",
    "refine_boxes",
    "rpn_proposals",
    "run_box_stages",
]

#: Box count from which mmcv runs NMS class by class instead of offsetting the boxes.
_SPLIT_THRESHOLD = 10000

#: A box stage: head (``[K, C, 7, 7]`` -> ``[K, F]``), predictor (-> logits, deltas), coder.
BoxStage = tuple[nn.Module, nn.Module, BoxCoder]
#: A mask stage: head (``[K, C, 14, 14]`` -> features), predictor (-> ``[K, classes + 1, 28,
#: 28]`` logits).
MaskStage = tuple[nn.Module, nn.Module]


@dataclass(frozen=True)
class StageOutput:
    """What one box stage saw and predicted.

    Attributes:
        boxes: Per image, the ``[R_i, 4]`` boxes (x1, y1, x2, y2, input pixels) it pooled from.
        class_logits: ``[R, classes + 1]`` (background first), images concatenated.
        box_regression: ``[R, 4 * (classes + 1)]`` class-specific deltas (background first).
    """

    boxes: list[torch.Tensor]
    class_logits: torch.Tensor
    box_regression: torch.Tensor


def mmcv_batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS within each group, as mmcv's ``batched_nms`` computes it.

    Args:
        boxes: ``[K, 4]`` boxes.
        scores: ``[K]`` scores.
        groups: ``[K]`` group (class or level) of each box.
        iou_threshold: Boxes overlapping a better one of their group by more are dropped.

    Returns:
        ``[M]`` indices of the kept boxes, best score first.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    if boxes.shape[0] >= _SPLIT_THRESHOLD:
        # mmcv loops over the groups here; torchvision's loop gives the same boxes and order.
        return batched_nms(boxes, scores, groups, iou_threshold)
    # The offsets are added in float32 as mmcv adds them: the rounding moves IoUs by ~1e-6,
    # which decides boxes that sit on the threshold.
    offsets = groups.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def rpn_proposals(
    model: MaskRCNN,
    images: torch.Tensor,
    features: Mapping[str, torch.Tensor],
    image_shapes: Sequence[tuple[int, int]],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """mmdet's ``RPNHead`` proposals with the model's RPN head, anchors, coder and test settings.

    Args:
        model: The detector (its ``rpn``).
        images: ``[N, 3, H, W]`` the padded batch (only its size is read).
        features: The FPN maps, finest first.
        image_shapes: ``(h, w)`` of each image's content in the batch (mmdet's ``img_shape``).

    Returns:
        Per image the ``[P_i, 4]`` proposals and their ``[P_i]`` sigmoid scores, best first.
    """
    rpn = model.rpn
    maps = list(features.values())
    logits, deltas = rpn.head(maps)  # per level [N, A, h, w] and [N, 4A, h, w]
    anchors = rpn.anchor_generator(ImageList(images, list(image_shapes)), maps)
    num_images = images.shape[0]
    # Flattened in (row, column, anchor) order per level, as mmdet and the anchors are.
    level_logits = [x.permute(0, 2, 3, 1).reshape(num_images, -1) for x in logits]
    level_deltas = [x.view(num_images, -1, 4, *x.shape[-2:]).permute(0, 3, 4, 1, 2)
                    .reshape(num_images, -1, 4) for x in deltas]
    counts = [x.shape[1] for x in level_logits]
    pre_nms = rpn._pre_nms_top_n["testing"]
    post_nms = rpn._post_nms_top_n["testing"]
    all_boxes, all_scores = [], []
    for i in range(num_images):
        level_anchors = anchors[i].split(counts)
        scores, chosen_deltas, chosen_anchors, levels = [], [], [], []
        for level, (x, d, a) in enumerate(zip(level_logits, level_deltas, level_anchors,
                                              strict=True)):
            score = x[i].sigmoid()
            index = torch.arange(score.shape[0], device=score.device)
            if 0 < pre_nms < score.shape[0]:
                score, index = score.sort(descending=True)
                score, index = score[:pre_nms], index[:pre_nms]
            scores.append(score)
            chosen_deltas.append(d[i][index])
            chosen_anchors.append(a[index])
            levels.append(torch.full_like(index, level))
        score = torch.cat(scores)
        boxes = rpn.box_coder.decode_single(torch.cat(chosen_deltas), torch.cat(chosen_anchors))
        boxes = clip_boxes_to_image(boxes, image_shapes[i])
        level = torch.cat(levels)
        # mmdet's min_bbox_size 0: only boxes without width or height go.
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, score, level = boxes[valid], score[valid], level[valid]
        keep = mmcv_batched_nms(boxes, score, level, rpn.nms_thresh)[:post_nms]
        all_boxes.append(boxes[keep])
        all_scores.append(score[keep])
    return all_boxes, all_scores


def run_box_stages(
    box_roi_pool: nn.Module,
    stages: Sequence[BoxStage],
    features: Mapping[str, torch.Tensor],
    proposals: Sequence[torch.Tensor],
    image_shapes: Sequence[tuple[int, int]],
) -> list[StageOutput]:
    """Run the box stages in turn, each on the boxes the previous one refined.

    Between stages the boxes are regressed with the deltas of the class whose logit is largest
    among the foreground classes (mmdet's ``regress_by_class``) and clipped to the image; none
    is dropped.

    Args:
        box_roi_pool: The box RoI pooling (``[K, C, 7, 7]`` per box).
        stages: ``(head, predictor, coder)`` of each stage.
        features: The FPN maps.
        proposals: Per image the ``[P_i, 4]`` boxes the first stage pools from.
        image_shapes: ``(h, w)`` of each image's content.
    """
    boxes = list(proposals)
    outputs: list[StageOutput] = []
    for index, (head, predictor, coder) in enumerate(stages):
        pooled = box_roi_pool(dict(features), boxes, list(image_shapes))
        logits, deltas = predictor(head(pooled))  # [R, C + 1], [R, 4 (C + 1)]
        outputs.append(StageOutput(boxes, logits, deltas))
        if index + 1 < len(stages):
            boxes = refine_boxes(coder, boxes, logits, deltas, image_shapes)
    return outputs


def refine_boxes(
    coder: BoxCoder,
    boxes: Sequence[torch.Tensor],
    class_logits: torch.Tensor,
    box_regression: torch.Tensor,
    image_shapes: Sequence[tuple[int, int]],
) -> list[torch.Tensor]:
    """mmdet's ``regress_by_class`` between cascade stages: each box moved by the deltas of
    its best foreground class, then clipped to its image.

    Args:
        coder: The stage's box coder.
        boxes: Per image ``[R_i, 4]`` the boxes the stage pooled from.
        class_logits: ``[R, classes + 1]`` the stage's logits (background first).
        box_regression: ``[R, 4 (classes + 1)]`` its deltas.
        image_shapes: ``(h, w)`` of each image's content.

    Returns:
        Per image the ``[R_i, 4]`` refined boxes.
    """
    label = class_logits[:, 1:].argmax(dim=1) + 1  # [R], background excluded
    rows = torch.arange(len(label), device=label.device)
    # Sizes spelt out: -1 is ambiguous when no box is left.
    chosen = box_regression.view(len(label), box_regression.shape[1] // 4, 4)[rows, label]
    refined = coder.decode_single(chosen, torch.cat(list(boxes)))  # [R, 4]
    return [clip_boxes_to_image(b, shape) for b, shape in
            zip(refined.split([len(b) for b in boxes]), image_shapes, strict=True)]


def detections_from_stages(
    outputs: Sequence[StageOutput],
    coder: BoxCoder,
    image_shapes: Sequence[tuple[int, int]],
    *,
    score_threshold: float,
    nms_threshold: float,
    max_detections: int,
    scale_factors: Sequence[torch.Tensor] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """mmdet's ``get_bboxes`` + ``multiclass_nms`` on the stages' outputs.

    Args:
        outputs: The stages' outputs (:func:`run_box_stages`).
        coder: The last stage's box coder.
        image_shapes: ``(h, w)`` of each image's content (boxes are clipped to it).
        score_threshold: Scores at or below it are dropped.
        nms_threshold: IoU of the class-wise NMS.
        max_detections: Detections kept per image.
        scale_factors: Per image ``[4]`` (w, h, w, h) resize factors to divide the boxes by
            (mmdet's ``rescale``), or ``None`` to keep input pixels.

    Returns:
        Per image ``boxes`` ``[D, 4]``, ``scores`` ``[D]``, ``labels`` ``[D]`` (1-based: the
        background is 0), best first.
    """
    last = outputs[-1]
    # mmdet: sum([...]) / float(n), the same additions in the same order.
    mean_logits = sum(o.class_logits for o in outputs) / float(len(outputs))
    counts = [len(b) for b in last.boxes]
    results = []
    for i, (boxes, logits, deltas) in enumerate(zip(
            last.boxes, mean_logits.split(counts), last.box_regression.split(counts),
            strict=True)):
        scores = F.softmax(logits, dim=-1)[:, 1:]  # [R, C]
        decoded = coder.decode_single(deltas, boxes).view(len(boxes), deltas.shape[1] // 4, 4)
        decoded = decoded[:, 1:]
        decoded = clip_boxes_to_image(decoded, image_shapes[i])  # [R, C, 4]
        if scale_factors is not None:
            decoded = decoded / scale_factors[i].to(decoded)
        labels = torch.arange(1, scores.shape[1] + 1, device=scores.device).expand_as(scores)
        decoded, scores, labels = decoded.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
        valid = scores > score_threshold
        decoded, scores, labels = decoded[valid], scores[valid], labels[valid]
        keep = mmcv_batched_nms(decoded, scores, labels, nms_threshold)[:max_detections]
        results.append({"boxes": decoded[keep], "scores": scores[keep], "labels": labels[keep]})
    return results


def average_mask_probabilities(
    mask_roi_pool: nn.Module,
    stages: Sequence[MaskStage],
    features: Mapping[str, torch.Tensor],
    boxes: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    image_shapes: Sequence[tuple[int, int]],
) -> list[torch.Tensor]:
    """The mean of the mask heads' sigmoids for the detected class of each box.

    Args:
        mask_roi_pool: The mask RoI pooling (``[K, C, 14, 14]`` per box).
        stages: ``(head, predictor)`` of each mask head.
        features: The FPN maps.
        boxes: Per image ``[D_i, 4]`` boxes in input pixels.
        labels: Per image ``[D_i]`` 1-based labels.
        image_shapes: ``(h, w)`` of each image's content.

    Returns:
        Per image ``[D_i, M, M]`` probabilities (M = 28).
    """
    counts = [len(b) for b in boxes]
    if sum(counts) == 0:
        return [b.new_zeros((0, 28, 28)) for b in boxes]
    pooled = mask_roi_pool(dict(features), list(boxes), list(image_shapes))
    total = sum(predictor(head(pooled)).sigmoid() for head, predictor in stages)
    mean = total / float(len(stages))  # [K, C + 1, M, M]
    label = torch.cat(list(labels))
    chosen = mean[torch.arange(label.shape[0], device=label.device), label]
    return list(chosen.split(counts))


def paste_masks(
    probabilities: torch.Tensor,
    boxes: torch.Tensor,
    height: int,
    width: int,
    threshold: float | None = 0.5,
) -> torch.Tensor:
    """mmdet's ``_do_paste_mask`` box by box, thresholded.

    Each ``M x M`` mask is sampled bilinearly (``grid_sample``, ``align_corners=False``) at the
    pixel centres inside ``[floor(x1) - 1, ceil(x2) + 1] x [floor(y1) - 1, ceil(y2) + 1]``
    (clipped to the image); pixels outside that window are 0.

    Args:
        probabilities: ``[D, M, M]`` mask probabilities.
        boxes: ``[D, 4]`` boxes in the output image's pixels.
        height: Output height.
        width: Output width.
        threshold: Probabilities at or above it are foreground; ``None``: the probabilities
            are returned.

    Returns:
        ``[D, height, width]`` boolean masks (float probabilities without a threshold).
    """
    out = torch.zeros((len(boxes), height, width), device=boxes.device,
                      dtype=torch.float32 if threshold is None else torch.bool)
    for k, (mask, box) in enumerate(zip(probabilities, boxes, strict=True)):
        x0_int, y0_int = (box[:2].floor() - 1).clamp(min=0).to(torch.int32).tolist()
        x1_int = int((box[2].ceil() + 1).clamp(max=width))
        y1_int = int((box[3].ceil() + 1).clamp(max=height))
        x0, y0, x1, y1 = box
        ys = torch.arange(y0_int, y1_int, device=box.device).to(torch.float32) + 0.5
        xs = torch.arange(x0_int, x1_int, device=box.device).to(torch.float32) + 0.5
        ys = (ys - y0) / (y1 - y0) * 2 - 1
        xs = (xs - x0) / (x1 - x0) * 2 - 1
        # A box without width or height divides by zero; mmdet samples the centre then.
        ys = torch.where(torch.isinf(ys), torch.zeros_like(ys), ys)
        xs = torch.where(torch.isinf(xs), torch.zeros_like(xs), xs)
        grid = torch.stack([xs[None, :].expand(len(ys), -1), ys[:, None].expand(-1, len(xs))],
                           dim=2)  # [h, w, 2] as (x, y)
        pasted = F.grid_sample(mask[None, None].to(torch.float32), grid[None],
                               align_corners=False)[0, 0]
        out[k, y0_int:y1_int, x0_int:x1_int] = pasted if threshold is None else \
            pasted >= threshold
    return out


def box_and_mask_stages(roi_heads: nn.Module) -> tuple[list[BoxStage], list[MaskStage]]:
    """The box stages and mask heads of a detector's RoI heads: one of each for torchvision's
    ``RoIHeads`` (Mask R-CNN), the cascade's for ``CascadeRoIHeads``.

    Raises:
        UsageError: RoI heads without masks, or of an unknown kind.
    """
    if isinstance(roi_heads, RoIHeads):
        if not roi_heads.has_mask():
            raise UsageError("the detector has no mask head")
        return ([(roi_heads.box_head, roi_heads.box_predictor, roi_heads.box_coder)],
                [(roi_heads.mask_head, roi_heads.mask_predictor)])
    stages = getattr(roi_heads, "box_stages", None)
    if stages is None:
        raise UsageError(f"unknown RoI heads {type(roi_heads).__name__}: expected torchvision's "
                         f"RoIHeads or CascadeRoIHeads")
    return roi_heads.box_stages(), roi_heads.mask_stages()


def _scale_factor(value: Any) -> torch.Tensor:
    """mmdet's ``scale_factor`` (a number or ``[w, h, w, h]``) as a float32 ``[4]`` tensor."""
    factor = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
    if factor.numel() == 1:
        factor = factor.expand(4)
    if factor.numel() != 4:
        raise UsageError(f"scale_factor must be a number or [w, h, w, h], got {value!r}")
    return factor


def detect_preprocessed(
    model: MaskRCNN, images: torch.Tensor, img_metas: Sequence[Mapping[str, Any]]
) -> list[dict[str, torch.Tensor]]:
    """Detect on a batch already resized, normalised and padded, as mmdet's ``simple_test``.

    Works for the Mask R-CNN and Cascade Mask R-CNN detectors of this library (see the module
    doc for the computation).

    Args:
        model: The detector, in eval mode.
        images: ``[N, 3, H, W]`` the normalised images, each zero-padded at the bottom and right.
        img_metas: Per image, mmdet's ``img_shape`` (``(h, w[, 3])`` of its content in the
            batch), ``ori_shape`` (``(h, w[, 3])`` before resizing) and ``scale_factor``
            (``[w_scale, h_scale, w_scale, h_scale]`` or one number).

    Returns:
        Per image ``boxes`` ``[D, 4]`` (x1, y1, x2, y2 in original pixels), ``scores`` ``[D]``,
        ``labels`` ``[D]`` (1-based, as this library's detectors count: label k + 1 is class k)
        and ``masks`` ``[D, ori_h, ori_w]`` (bool), best score first.

    Raises:
        UsageError: The model is in training mode, or the metas do not match the batch.
    """
    if model.training:
        raise UsageError("detect_preprocessed needs the model in eval mode (model.eval())")
    if images.dim() != 4 or len(img_metas) != images.shape[0]:
        raise UsageError(f"need one img_meta per image of an [N, 3, H, W] batch, got "
                         f"{len(img_metas)} for a batch of shape {list(images.shape)}")
    image_shapes = [(int(m["img_shape"][0]), int(m["img_shape"][1])) for m in img_metas]
    original_shapes = [(int(m["ori_shape"][0]), int(m["ori_shape"][1])) for m in img_metas]
    scale_factors = [_scale_factor(m["scale_factor"]).to(images.device) for m in img_metas]
    roi_heads = model.roi_heads
    box_stages, mask_stages = box_and_mask_stages(roi_heads)
    features = model.backbone(images)
    proposals, _ = rpn_proposals(model, images, features, image_shapes)
    outputs = run_box_stages(roi_heads.box_roi_pool, box_stages, features, proposals,
                             image_shapes)
    results = detections_from_stages(
        outputs, box_stages[-1][2], image_shapes, score_threshold=roi_heads.score_thresh,
        nms_threshold=roi_heads.nms_thresh, max_detections=roi_heads.detections_per_img,
        scale_factors=scale_factors)
    # mmdet pools the masks from the rescaled boxes multiplied back, and pastes those divided
    # again: both roundings are kept.
    input_boxes = [r["boxes"] * f for r, f in zip(results, scale_factors, strict=True)]
    probabilities = average_mask_probabilities(
        roi_heads.mask_roi_pool, mask_stages, features, input_boxes,
        [r["labels"] for r in results], image_shapes)
    for result, boxes, factor, probs, (height, width) in zip(
            results, input_boxes, scale_factors, probabilities, original_shapes, strict=True):
        result["masks"] = paste_masks(probs, boxes / factor, height, width)
    return results
