"""Upstream's mmdetection Mask R-CNN and Cascade Mask R-CNN checkpoints as torchvision
``MaskRCNN`` models.

:func:`from_mmdet` reads the ``model`` dict of an upstream mmdet config, builds the matching
detector by its ``type`` (``MaskRCNN``: :func:`~internimage.detection.model.build_mask_rcnn`;
``CascadeRCNN``: :func:`~internimage.detection.cascade.build_cascade_mask_rcnn`) and converts
the checkpoint's keys strictly. The key map:

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

Cascade stage S (``CascadeRoIHeads``), with the class rows moved as above:

================================================  ===============================================
mmdet                                             torchvision
================================================  ===============================================
``roi_head.bbox_head.S.shared_convs.i.conv/bn``   ``roi_heads.box_heads.S.i.0/1``
``roi_head.bbox_head.S.shared_fcs.0``             ``roi_heads.box_heads.S.<convs + 1>``
``roi_head.bbox_head.S.fc_cls`` / ``fc_reg``      ``roi_heads.box_predictors.S.cls_score`` /
                                                  ``bbox_pred``
``roi_head.mask_head.S.convs.i.conv``             ``roi_heads.mask_heads.S.i.0``
``roi_head.mask_head.S.upsample``                 ``roi_heads.mask_predictors.S.conv5_mask``
``roi_head.mask_head.S.conv_logits``              ``roi_heads.mask_predictors.S.mask_fcn_logits``
================================================  ===============================================
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
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

__all__ = ["cascade_mask_rcnn_from_mmdet_config", "convert_mmdet_state_dict",
           "detector_from_mmdet_config", "from_mmdet", "mask_rcnn_from_mmdet_config"]

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


def _shared_parts(
    model_cfg: Mapping[str, Any], roi_known: Sequence[str] = ()
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Parse what Mask R-CNN and Cascade Mask R-CNN configs share: backbone, neck, RPN and RoI
    extractors.

    Returns:
        The backbone, the :class:`DetectorHeads` fields of the neck and RPN, and the
        ``roi_head`` dict (with ``bbox_head`` and ``mask_head`` taken from the top level when
        given there).
    """
    model_cfg = _section("model", model_cfg, ("backbone", "neck", "rpn_head", "roi_head",
                                               "bbox_head", "mask_head"))
    roi = _section("roi_head", model_cfg.get("roi_head", {}),
                   ("bbox_roi_extractor", "mask_roi_extractor", "bbox_head", "mask_head",
                    *roi_known))
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

    fields = {"fpn_channels": channels, "anchor_scale": scales[0],
              "anchor_ratios": tuple(float(v) for v in anchor.get("ratios", (0.5, 1.0, 2.0))),
              "fpn_norm": fpn_norm}
    return classifier, fields, roi


def _mask_head(name: str, spec: Any, channels: int, num_classes: int) -> dict[str, int]:
    """The :class:`DetectorHeads` fields of an mmdet ``FCNMaskHead`` config."""
    mask = _section(name, spec, ("num_convs", "in_channels", "conv_out_channels", "num_classes",
                                 "roi_feat_size", "conv_kernel_size", "upsample_cfg",
                                 "class_agnostic"))
    _expect(name, "in_channels", mask.get("in_channels", channels), channels)
    _expect(name, "num_classes", mask.get("num_classes", num_classes), num_classes)
    _expect(name, "roi_feat_size", mask.get("roi_feat_size", 14), 14)
    _expect(name, "conv_kernel_size", mask.get("conv_kernel_size", 3), 3)
    _expect(name, "class_agnostic", mask.get("class_agnostic", False), False)
    return {"mask_convs": int(mask.get("num_convs", 4)),
            "mask_channels": int(mask.get("conv_out_channels", 256))}


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
    if model_cfg.get("type", "MaskRCNN") != "MaskRCNN":
        raise ConfigError(f"model type {model_cfg.get('type')!r} is not Mask R-CNN "
                          f"(detector_from_mmdet_config builds every supported type)")
    classifier, fields, roi = _shared_parts(model_cfg)
    channels = fields["fpn_channels"]
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

    mask = _mask_head("roi_head.mask_head", roi["mask_head"], channels, num_classes)
    heads = DetectorHeads(**fields, box_fc_channels=int(box.get("fc_out_channels", 1024)), **mask)
    model = build_mask_rcnn(classifier, num_classes=num_classes, heads=heads, settings=settings)
    return model, num_classes


def _cascade_box_head(name: str, spec: Any, channels: int) -> dict[str, Any]:
    """The settings of one mmdet ``ConvFCBBoxHead`` stage of a cascade: shared convolutions
    with BatchNorm, one shared fully connected layer, class-specific regression."""
    box = _section(name, spec, ("in_channels", "num_shared_convs", "num_shared_fcs",
                                "num_cls_convs", "num_cls_fcs", "num_reg_convs", "num_reg_fcs",
                                "conv_out_channels", "fc_out_channels", "roi_feat_size",
                                "num_classes", "bbox_coder", "reg_class_agnostic",
                                "reg_decoded_bbox", "with_avg_pool"))
    _expect(name, "in_channels", box.get("in_channels", channels), channels)
    _expect(name, "roi_feat_size", box.get("roi_feat_size", 7), 7)
    _expect(name, "reg_class_agnostic", box.get("reg_class_agnostic", False), False)
    _expect(name, "with_avg_pool", box.get("with_avg_pool", False), False)
    _expect(name, "num_shared_fcs", box.get("num_shared_fcs", 1), 1)
    for branch in ("num_cls_convs", "num_cls_fcs", "num_reg_convs", "num_reg_fcs"):
        _expect(name, branch, box.get(branch, 0), 0)
    convs = int(box.get("num_shared_convs", 4))
    norm = spec.get("norm_cfg") or {}
    if convs and norm.get("type") not in ("BN", "SyncBN"):
        # Without a norm mmdet's convolutions have biases and no BatchNorm.
        raise ConfigError(f"{name}.norm_cfg={spec.get('norm_cfg')!r} is not supported (the box "
                          f"heads built here have BatchNorm after bias-free convolutions)")
    coder = _section(f"{name}.bbox_coder", box.get("bbox_coder") or {},
                     ("target_means", "target_stds", "clip_border"))
    _expect(f"{name}.bbox_coder", "target_means",
            [float(v) for v in coder.get("target_means", (0.0,) * 4)], [0.0] * 4)
    return {
        "num_classes": int(box["num_classes"]),
        "convs": convs,
        "conv_channels": int(box.get("conv_out_channels", 256)),
        "fc_channels": int(box.get("fc_out_channels", 1024)),
        "stds": tuple(float(v) for v in coder.get("target_stds", (0.1, 0.1, 0.2, 0.2))),
    }


def cascade_mask_rcnn_from_mmdet_config(
    model_cfg: Mapping[str, Any], *, settings: DetectorSettings | None = None
) -> tuple[MaskRCNN, int]:
    """An untrained Cascade Mask R-CNN with the architecture of an upstream mmdet config.

    Args:
        model_cfg: The ``model`` dict of an mmdet ``CascadeRCNN`` config: ``backbone``,
            ``neck``, ``rpn_head`` as for :func:`mask_rcnn_from_mmdet_config`, and ``roi_head``
            (``CascadeRoIHead``) with ``num_stages``, ``bbox_head`` (one ``ConvFCBBoxHead`` per
            stage, or one for all) and ``mask_head`` (one ``FCNMaskHead`` per stage, or one
            replicated). Losses, training settings and stage loss weights are not used.
        settings: Resizing and post-processing (default: upstream's COCO test settings).

    Returns:
        The model (:func:`~internimage.detection.cascade.build_cascade_mask_rcnn`) and its
        number of object classes.

    Raises:
        ConfigError: An unknown entry, or a setting the model cannot express.
    """
    from internimage.detection.cascade import build_cascade_mask_rcnn

    _expect("model", "type", model_cfg.get("type", "CascadeRCNN"), "CascadeRCNN")
    classifier, fields, roi = _shared_parts(model_cfg, ("num_stages", "stage_loss_weights"))
    _expect("roi_head", "type", model_cfg.get("roi_head", {}).get("type", "CascadeRoIHead"),
            "CascadeRoIHead")
    channels = fields["fpn_channels"]
    stages = int(roi.get("num_stages", 3))
    if stages < 1:
        raise ConfigError(f"roi_head.num_stages must be >= 1, got {stages}")

    def per_stage(part: str) -> list[Any]:
        specs = roi[part]
        if isinstance(specs, Mapping):
            return [specs] * stages  # mmdet replicates one head for every stage
        if not isinstance(specs, Sequence) or len(specs) != stages:
            raise ConfigError(f"roi_head.{part} must be one head or a list of {stages} "
                              f"(num_stages), got {specs!r}")
        return list(specs)

    boxes = [_cascade_box_head(f"roi_head.bbox_head.{i}", spec, channels)
             for i, spec in enumerate(per_stage("bbox_head"))]
    num_classes = boxes[0]["num_classes"]
    masks = [_mask_head(f"roi_head.mask_head.{i}", spec, channels, num_classes)
             for i, spec in enumerate(per_stage("mask_head"))]
    for i, (box, mask) in enumerate(zip(boxes[1:], masks[1:], strict=True), start=1):
        for key in ("num_classes", "convs", "conv_channels", "fc_channels"):
            _expect(f"roi_head.bbox_head.{i}", key, box[key], boxes[0][key])
        for key, value in mask.items():
            _expect(f"roi_head.mask_head.{i}", key, value, masks[0][key])
    heads = DetectorHeads(**fields, box_fc_channels=boxes[0]["fc_channels"], **masks[0])
    model = build_cascade_mask_rcnn(
        classifier, num_classes=num_classes, heads=heads, settings=settings,
        stage_stds=[box["stds"] for box in boxes], box_convs=boxes[0]["convs"],
        box_conv_channels=boxes[0]["conv_channels"])
    return model, num_classes


#: mmdet detector type -> the function that builds it from its config.
_DETECTORS = {"MaskRCNN": mask_rcnn_from_mmdet_config,
              "CascadeRCNN": cascade_mask_rcnn_from_mmdet_config}


def detector_from_mmdet_config(
    model_cfg: Mapping[str, Any], *, settings: DetectorSettings | None = None
) -> tuple[MaskRCNN, int]:
    """An untrained detector for an upstream mmdet ``model`` config, by its ``type``:
    ``MaskRCNN`` (the default) or ``CascadeRCNN``.

    Raises:
        ConfigError: Another type, or see the builders of each type.
    """
    kind = model_cfg.get("type", "MaskRCNN") if isinstance(model_cfg, Mapping) else None
    if kind not in _DETECTORS:
        raise ConfigError(f"model type {kind!r} is not supported; supported: "
                          f"{', '.join(_DETECTORS)}")
    return _DETECTORS[kind](model_cfg, settings=settings)


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


# Cascade stages: roi_head.{bbox,mask}_head.S.* -> the S-th head of CascadeRoIHeads.
_CASCADE_RENAMES = (
    (re.compile(r"^roi_head\.bbox_head\.(\d+)\.shared_convs\.(\d+)\.conv\."),
     r"roi_heads.box_heads.\1.\2.0."),
    (re.compile(r"^roi_head\.bbox_head\.(\d+)\.shared_convs\.(\d+)\.bn\."),
     r"roi_heads.box_heads.\1.\2.1."),
    (re.compile(r"^roi_head\.mask_head\.(\d+)\.convs\.(\d+)\.conv\."),
     r"roi_heads.mask_heads.\1.\2.0."),
    (re.compile(r"^roi_head\.mask_head\.(\d+)\.upsample\."),
     r"roi_heads.mask_predictors.\1.conv5_mask."),
)
_STAGE_KEY = re.compile(r"^roi_head\.(bbox_head|mask_head)\.(\d+)\.([a-z_]+)\.(.*)$")
_SHARED_CONV = re.compile(r"^roi_head\.bbox_head\.(\d+)\.shared_convs\.(\d+)\.")


def _background_first(kind: str, value: torch.Tensor) -> torch.Tensor:
    """mmdet's class outputs (background last in ``fc_cls``, absent from ``fc_reg`` and
    ``conv_logits``) -> torchvision's (background first; zeros where mmdet has none)."""
    if kind == "fc_cls":
        return torch.cat([value[-1:], value[:-1]])
    rows = 4 if kind == "fc_reg" else 1
    return torch.cat([value.new_zeros((rows, *value.shape[1:])), value])


#: mmdet class layer -> (its head, torchvision module of a single head, of cascade stage S).
_CLASS_LAYERS = {
    "fc_cls": ("bbox_head", "roi_heads.box_predictor.cls_score",
               "roi_heads.box_predictors.{}.cls_score"),
    "fc_reg": ("bbox_head", "roi_heads.box_predictor.bbox_pred",
               "roi_heads.box_predictors.{}.bbox_pred"),
    "conv_logits": ("mask_head", "roi_heads.mask_predictor.mask_fcn_logits",
                    "roi_heads.mask_predictors.{}.mask_fcn_logits"),
}
_SINGLE_CLASS_KEY = re.compile(r"^roi_head\.(bbox_head|mask_head)\.([a-z_]+)\.([a-z_]+)$")


def convert_mmdet_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmdet Mask R-CNN and Cascade Mask R-CNN keys and tensors -> this library's torchvision
    models' (see the module doc).

    Keys outside the map are passed through unchanged (so that a strict load names them);
    ``ema_*`` buffers, which some upstream files carry, are dropped.
    """
    # A cascade box head's fully connected layer follows its convolutions and torchvision's
    # Flatten in FastRCNNConvFCHead, so its index is the stage's convolution count + 1.
    convs: dict[str, int] = {}
    for key in state:
        match = _SHARED_CONV.match(key)
        if match:
            convs[match[1]] = max(convs.get(match[1], 0), int(match[2]) + 1)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("ema_"):
            continue
        single = _SINGLE_CLASS_KEY.match(key)
        if single and _CLASS_LAYERS.get(single[2], ("",))[0] == single[1]:
            out[f"{_CLASS_LAYERS[single[2]][1]}.{single[3]}"] = _background_first(single[2], value)
            continue
        stage = _STAGE_KEY.match(key)
        if stage and _CLASS_LAYERS.get(stage[3], ("",))[0] == stage[1] and "." not in stage[4]:
            target = _CLASS_LAYERS[stage[3]][2].format(stage[2])
            out[f"{target}.{stage[4]}"] = _background_first(stage[3], value)
            continue
        if stage and stage[1] == "bbox_head" and stage[3] == "shared_fcs" and \
                stage[4].startswith("0."):
            index = convs.get(stage[2], 0) + 1
            out[f"roi_heads.box_heads.{stage[2]}.{index}.{stage[4][2:]}"] = value
            continue
        new = key
        for pattern, replacement in (*_RENAMES, *_CASCADE_RENAMES):
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
    """Build a torchvision Mask R-CNN or Cascade Mask R-CNN from an upstream mmdet config and
    load its checkpoint.

    The model is in eval mode. Its parts give mmdet's outputs: ``backbone(x)`` the five FPN maps
    (``"0"``..``"3"``, ``"pool"``), ``rpn.head`` the RPN scores and deltas per level,
    ``roi_heads.box_head`` + ``box_predictor`` and ``mask_head`` + ``mask_predictor`` the head
    outputs on pooled RoI features (class outputs with the background first; a cascade has
    ``box_heads``, ``box_predictors``, ``mask_heads`` and ``mask_predictors``, one per stage).
    :func:`~internimage.detection.inference.detect_preprocessed` gives mmdet's detections.

    Args:
        checkpoint: The ``.pth`` file (``{"meta", "state_dict"}``), or the loaded dict.
        model_cfg: See :func:`detector_from_mmdet_config`.
        settings: Resizing and post-processing (default: upstream's COCO test settings).

    Raises:
        CheckpointMismatchError: A key of the checkpoint or of the model is not matched, or a
            shape differs (every key is listed).
        CheckpointFileError: The file is not a readable checkpoint.
        ConfigError: See :func:`detector_from_mmdet_config`.
    """
    model, _ = detector_from_mmdet_config(model_cfg, settings=settings)
    load_converted_strictly(model, checkpoint, convert_mmdet_state_dict,
                            source="the mmdet checkpoint")
    return model.eval()
