"""Upstream's mmdetection Mask R-CNN checkpoints as torchvision ``MaskRCNN`` models.

:func:`from_mmdet` reads the ``model`` dict of an upstream mmdet config, builds the matching
detector with :func:`~internimage.detection.model.build_mask_rcnn` and converts the checkpoint's
keys strictly. The key map:

=======================================  ==================================================
mmdet                                    torchvision
=======================================  ==================================================
``backbone.*``                           ``backbone.body.*`` (this library's = upstream's)
``neck.lateral_convs.i.conv``            ``backbone.fpn.inner_blocks.i.0``
``neck.fpn_convs.i.conv``                ``backbone.fpn.layer_blocks.i.0``
``rpn_head.rpn_conv``                    ``rpn.head.conv.0.0``
``rpn_head.rpn_cls`` / ``rpn_reg``       ``rpn.head.cls_logits`` / ``bbox_pred``
``roi_head.bbox_head.shared_fcs.0/1``    ``roi_heads.box_head.fc6/fc7``
``roi_head.bbox_head.fc_cls``            ``roi_heads.box_predictor.cls_score`` (background
                                         row moved from last to first)
``roi_head.bbox_head.fc_reg``            ``roi_heads.box_predictor.bbox_pred`` (4 background
                                         rows of zeros prepended)
``roi_head.mask_head.convs.i.conv``      ``roi_heads.mask_head.i.0``
``roi_head.mask_head.upsample``          ``roi_heads.mask_predictor.conv5_mask``
``roi_head.mask_head.conv_logits``       ``roi_heads.mask_predictor.mask_fcn_logits``
                                         (a background channel of zeros prepended)
=======================================  ==================================================
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchvision.models.detection import MaskRCNN

from internimage.detection.model import (
    FPN_STRIDES,
    DetectorHeads,
    DetectorSettings,
    build_mask_rcnn,
)
from internimage.errors import ConfigError
from internimage.models.checkpoint import load_converted_strictly
from internimage.models.flash_internimage import build_upstream_backbone, dense_backbone_arguments
from internimage.models.internimage import FLASH_UPSTREAM_DEFAULTS, UPSTREAM_DEFAULTS

__all__ = ["convert_mmdet_state_dict", "from_mmdet", "mask_rcnn_from_mmdet_config"]

# Entries that describe training, initialisation or losses rather than the network.
_IGNORED = ("type", "init_cfg", "loss_cls", "loss_bbox", "loss_mask", "norm_cfg", "act_cfg",
            "conv_cfg", "upsample_cfg", "train_cfg", "test_cfg", "pretrained")
_BACKBONE_IGNORED = ("type", "out_indices", "init_cfg", "pretrained")


def _section(name: str, values: Any, known: Sequence[str]) -> dict[str, Any]:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{name} must be a mapping of settings, got {type(values).__name__}")
    unknown = sorted(set(values) - set(known) - set(_IGNORED))
    if unknown:
        raise ConfigError(
            f"unknown {name} setting(s) {', '.join(map(repr, unknown))}; known: "
            f"{', '.join(sorted(known))}"
        )
    return dict(values)


def _expect(name: str, key: str, value: Any, expected: Any) -> None:
    if value != expected:
        raise ConfigError(
            f"{name}.{key}={value!r} is not supported (the torchvision Mask R-CNN built here has "
            f"{expected!r})"
        )


def _coder_stds(name: str, coder: Any, expected: Sequence[float]) -> None:
    coder = _section(f"{name}.bbox_coder", coder or {}, ("target_means", "target_stds",
                                                        "clip_border"))
    _expect(f"{name}.bbox_coder", "target_means",
            [float(v) for v in coder.get("target_means", (0.0,) * 4)], [0.0] * 4)
    _expect(f"{name}.bbox_coder", "target_stds",
            [float(v) for v in coder.get("target_stds", expected)], [float(v) for v in expected])


def mask_rcnn_from_mmdet_config(
    model_cfg: Mapping[str, Any], *, settings: DetectorSettings | None = None
) -> tuple[MaskRCNN, int]:
    """An untrained torchvision Mask R-CNN with the architecture of an upstream mmdet config.

    Args:
        model_cfg: The ``model`` dict of an mmdet config: ``backbone`` (upstream InternImage
            arguments), ``neck`` (FPN), ``rpn_head`` (RPNHead), and ``roi_head`` with
            ``bbox_head`` (Shared2FCBBoxHead) and ``mask_head`` (FCNMaskHead); ``bbox_head`` and
            ``mask_head`` are also accepted at the top level. Losses, initialisation, norm and
            training/test settings are accepted and not used.
        settings: Resizing and post-processing (default: upstream's COCO test settings).

    Returns:
        The model and its number of object classes (the model has one more: the background).

    Raises:
        ConfigError: An unknown entry, or a setting the torchvision model cannot express.
    """
    model_cfg = _section("model", model_cfg, ("backbone", "neck", "rpn_head", "roi_head",
                                               "bbox_head", "mask_head"))
    roi = _section("roi_head", model_cfg.get("roi_head", {}),
                   ("bbox_roi_extractor", "mask_roi_extractor", "bbox_head", "mask_head"))
    for part in ("bbox_head", "mask_head"):
        if part in model_cfg:
            if part in roi:
                raise ConfigError(f"{part} is given both in roi_head and at the top level")
            roi[part] = model_cfg[part]
    for part, where in (("backbone", model_cfg), ("neck", model_cfg), ("rpn_head", model_cfg),
                        ("bbox_head", roi), ("mask_head", roi)):
        if part not in where:
            raise ConfigError(f"the model config has no {part!r} entry")

    backbone_args = _section("backbone", model_cfg["backbone"],
                             (*FLASH_UPSTREAM_DEFAULTS, *UPSTREAM_DEFAULTS, *_BACKBONE_IGNORED))
    _expect("backbone", "out_indices", tuple(backbone_args.get("out_indices", (0, 1, 2, 3))),
            (0, 1, 2, 3))
    classifier = build_upstream_backbone({
        **dense_backbone_arguments(backbone_args, _BACKBONE_IGNORED), "num_classes": 0,
    })
    widths = list(classifier.config.stage_channels)

    neck = _section("neck", model_cfg["neck"], ("in_channels", "out_channels", "num_outs",
                                                "start_level", "add_extra_convs",
                                                "relu_before_extra_convs", "no_norm_on_lateral",
                                                "use_residual"))
    # mmdet's FPN, or upstream's FPN_vitdet (FlashInternImage detectors): the same top-down
    # path with LayerNorms after bias-free convolutions.
    neck_type = model_cfg["neck"].get("type", "FPN")
    if neck_type not in ("FPN", "FPN_vitdet"):
        raise ConfigError(f"neck.type={neck_type!r} is not supported; supported: FPN, FPN_vitdet")
    fpn_norm = None
    if neck_type == "FPN_vitdet":
        fpn_norm = "layer_norm"
        norm = model_cfg["neck"].get("norm_cfg") or {"type": "LN"}
        _expect("neck", "norm_cfg.type", norm.get("type"), "LN")
        _expect("neck", "use_residual", neck.get("use_residual", True), True)
    elif "use_residual" in neck:
        raise ConfigError("neck.use_residual is an FPN_vitdet setting; mmdet's FPN has none")
    _expect("neck", "in_channels", list(neck.get("in_channels", widths)), widths)
    _expect("neck", "num_outs", neck.get("num_outs", 5), 5)
    _expect("neck", "start_level", neck.get("start_level", 0), 0)
    _expect("neck", "add_extra_convs", neck.get("add_extra_convs", False), False)
    channels = int(neck["out_channels"])

    rpn = _section("rpn_head", model_cfg["rpn_head"], ("in_channels", "feat_channels",
                                                       "anchor_generator", "bbox_coder",
                                                       "num_convs"))
    _expect("rpn_head", "in_channels", rpn.get("in_channels", channels), channels)
    _expect("rpn_head", "feat_channels", rpn.get("feat_channels", channels), channels)
    _expect("rpn_head", "num_convs", rpn.get("num_convs", 1), 1)
    anchor = _section("rpn_head.anchor_generator", rpn.get("anchor_generator", {}),
                      ("scales", "ratios", "strides", "center_offset"))
    scales = [float(v) for v in anchor.get("scales", (8,))]
    if len(scales) != 1:
        raise ConfigError(f"rpn_head.anchor_generator.scales={scales}: one scale per level only")
    _expect("rpn_head.anchor_generator", "strides",
            [int(v) for v in anchor.get("strides", FPN_STRIDES)], list(FPN_STRIDES))
    _expect("rpn_head.anchor_generator", "center_offset", anchor.get("center_offset", 0.0), 0.0)
    _coder_stds("rpn_head", rpn.get("bbox_coder"), (1.0, 1.0, 1.0, 1.0))

    for extractor, size in (("bbox_roi_extractor", 7), ("mask_roi_extractor", 14)):
        if extractor not in roi:
            continue
        spec = _section(f"roi_head.{extractor}", roi[extractor],
                        ("roi_layer", "out_channels", "featmap_strides", "finest_scale"))
        layer = _section(f"roi_head.{extractor}.roi_layer", spec.get("roi_layer", {}),
                         ("output_size", "sampling_ratio", "aligned", "pool_mode"))
        _expect(f"roi_head.{extractor}.roi_layer", "output_size", layer.get("output_size", size),
                size)
        _expect(f"roi_head.{extractor}.roi_layer", "sampling_ratio",
                layer.get("sampling_ratio", 0), 0)
        _expect(f"roi_head.{extractor}.roi_layer", "aligned", layer.get("aligned", True), True)
        _expect(f"roi_head.{extractor}", "featmap_strides",
                list(spec.get("featmap_strides", FPN_STRIDES[:4])), list(FPN_STRIDES[:4]))
        _expect(f"roi_head.{extractor}", "finest_scale", spec.get("finest_scale", 56), 56)

    box = _section("roi_head.bbox_head", roi["bbox_head"],
                   ("in_channels", "fc_out_channels", "roi_feat_size", "num_classes",
                    "bbox_coder", "reg_class_agnostic", "num_shared_fcs"))
    _expect("roi_head.bbox_head", "in_channels", box.get("in_channels", channels), channels)
    _expect("roi_head.bbox_head", "roi_feat_size", box.get("roi_feat_size", 7), 7)
    _expect("roi_head.bbox_head", "reg_class_agnostic", box.get("reg_class_agnostic", False),
            False)
    _expect("roi_head.bbox_head", "num_shared_fcs", box.get("num_shared_fcs", 2), 2)
    _coder_stds("roi_head.bbox_head", box.get("bbox_coder"), (0.1, 0.1, 0.2, 0.2))
    num_classes = int(box["num_classes"])

    mask = _section("roi_head.mask_head", roi["mask_head"],
                    ("num_convs", "in_channels", "conv_out_channels", "num_classes",
                     "roi_feat_size", "conv_kernel_size", "upsample_cfg",
                     "class_agnostic"))
    _expect("roi_head.mask_head", "in_channels", mask.get("in_channels", channels), channels)
    _expect("roi_head.mask_head", "num_classes", mask.get("num_classes", num_classes),
            num_classes)
    _expect("roi_head.mask_head", "roi_feat_size", mask.get("roi_feat_size", 14), 14)
    _expect("roi_head.mask_head", "conv_kernel_size", mask.get("conv_kernel_size", 3), 3)
    _expect("roi_head.mask_head", "class_agnostic", mask.get("class_agnostic", False), False)

    heads = DetectorHeads(
        fpn_channels=channels,
        anchor_scale=scales[0],
        anchor_ratios=tuple(float(v) for v in anchor.get("ratios", (0.5, 1.0, 2.0))),
        box_fc_channels=int(box.get("fc_out_channels", 1024)),
        mask_convs=int(mask.get("num_convs", 4)),
        mask_channels=int(mask.get("conv_out_channels", 256)),
        fpn_norm=fpn_norm,
    )
    model = build_mask_rcnn(classifier, num_classes=num_classes, heads=heads, settings=settings)
    return model, num_classes


# (pattern, replacement) for the keys that are renamed only.
_RENAMES = (
    (re.compile(r"^backbone\."), "backbone.body."),
    (re.compile(r"^neck\.lateral_convs\.(\d+)\.conv\."), r"backbone.fpn.inner_blocks.\1.0."),
    (re.compile(r"^neck\.fpn_convs\.(\d+)\.conv\."), r"backbone.fpn.layer_blocks.\1.0."),
    # FPN_vitdet's LayerNorms follow the convolutions.
    (re.compile(r"^neck\.lateral_convs\.(\d+)\.ln\."), r"backbone.fpn.inner_blocks.\1.1."),
    (re.compile(r"^neck\.fpn_convs\.(\d+)\.ln\."), r"backbone.fpn.layer_blocks.\1.1."),
    (re.compile(r"^rpn_head\.rpn_conv\."), "rpn.head.conv.0.0."),
    (re.compile(r"^rpn_head\.rpn_cls\."), "rpn.head.cls_logits."),
    (re.compile(r"^rpn_head\.rpn_reg\."), "rpn.head.bbox_pred."),
    (re.compile(r"^roi_head\.bbox_head\.shared_fcs\.0\."), "roi_heads.box_head.fc6."),
    (re.compile(r"^roi_head\.bbox_head\.shared_fcs\.1\."), "roi_heads.box_head.fc7."),
    (re.compile(r"^roi_head\.mask_head\.convs\.(\d+)\.conv\."), r"roi_heads.mask_head.\1.0."),
    (re.compile(r"^roi_head\.mask_head\.upsample\."), "roi_heads.mask_predictor.conv5_mask."),
)


def convert_mmdet_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmdet Mask R-CNN keys and tensors -> torchvision ``MaskRCNN`` ones (see the module doc).

    Keys outside the map are passed through unchanged (so that a strict load names them);
    ``ema_*`` buffers, which some upstream files carry, are dropped.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("ema_"):
            continue
        if key.startswith("roi_head.bbox_head.fc_cls."):
            # mmdet: classes then background; torchvision: background then classes.
            out["roi_heads.box_predictor.cls_score." + key.rsplit(".", 1)[1]] = torch.cat(
                [value[-1:], value[:-1]])
            continue
        if key.startswith("roi_head.bbox_head.fc_reg."):
            background = value.new_zeros((4, *value.shape[1:]))
            out["roi_heads.box_predictor.bbox_pred." + key.rsplit(".", 1)[1]] = torch.cat(
                [background, value])
            continue
        if key.startswith("roi_head.mask_head.conv_logits."):
            background = value.new_zeros((1, *value.shape[1:]))
            out["roi_heads.mask_predictor.mask_fcn_logits." + key.rsplit(".", 1)[1]] = torch.cat(
                [background, value])
            continue
        new = key
        for pattern, replacement in _RENAMES:
            new, count = pattern.subn(replacement, new)
            if count:
                break
        out[new] = value
    return out


def from_mmdet(
    checkpoint: str | os.PathLike[str] | Mapping[str, Any],
    model_cfg: Mapping[str, Any],
    *,
    settings: DetectorSettings | None = None,
) -> MaskRCNN:
    """Build a torchvision Mask R-CNN from an upstream mmdet config and load its checkpoint.

    The model is in eval mode. Its parts give mmdet's outputs: ``backbone(x)`` the five FPN maps
    (``"0"``..``"3"``, ``"pool"``), ``rpn.head`` the RPN scores and deltas per level,
    ``roi_heads.box_head`` + ``box_predictor`` and ``mask_head`` + ``mask_predictor`` the head
    outputs on pooled RoI features (class outputs with the background first).

    Args:
        checkpoint: The ``.pth`` file (``{"meta", "state_dict"}``), or the loaded dict.
        model_cfg: See :func:`mask_rcnn_from_mmdet_config`.
        settings: Resizing and post-processing (default: upstream's COCO test settings).

    Raises:
        CheckpointMismatchError: A key of the checkpoint or of the model is not matched, or a
            shape differs (every key is listed).
        CheckpointFileError: The file is not a readable checkpoint.
        ConfigError: See :func:`mask_rcnn_from_mmdet_config`.
    """
    model, _ = mask_rcnn_from_mmdet_config(model_cfg, settings=settings)
    load_converted_strictly(model, checkpoint, convert_mmdet_state_dict,
                            source="the mmdet checkpoint")
    return model.eval()
