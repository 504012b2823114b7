"""InternImage + UperNet through transformers, and upstream's mmsegmentation checkpoints.

The head is transformers' ``UperNetForSemanticSegmentation`` with InternImage as its backbone
(:mod:`internimage.models.hf`). :func:`from_mmseg` builds it from the ``model`` dict of an
upstream mmseg config and loads an mmseg checkpoint strictly; the module names are the same in
both frameworks up to two renamings (``bn`` -> ``batch_norm``, ``conv_seg`` -> ``classifier``),
and the backbone's own keys are this library's (the upstream ones).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import UperNetConfig, UperNetForSemanticSegmentation

from internimage.errors import ConfigError
from internimage.models.checkpoint import load_converted_strictly
from internimage.models.flash_internimage import dense_backbone_arguments
from internimage.models.hf import STAGE_NAMES, InternImageHFConfig

__all__ = ["convert_mmseg_state_dict", "from_mmseg", "upernet_config", "upernet_from_mmseg_config"]

# mmseg config entries that describe training or loading rather than the network.
_BACKBONE_IGNORED = ("type", "out_indices", "init_cfg", "pretrained")
_HEAD_IGNORED = ("type", "norm_cfg", "loss_decode", "dropout_ratio", "act_cfg", "init_cfg",
                 "ignore_index", "sampler", "conv_cfg")
_MODEL_IGNORED = ("type", "pretrained", "train_cfg", "test_cfg", "data_preprocessor", "init_cfg")


def upernet_config(
    backbone: InternImageHFConfig,
    *,
    num_classes: int,
    hidden_size: int = 512,
    pool_scales: Sequence[int] = (1, 2, 3, 6),
    auxiliary_head: bool = True,
    auxiliary_channels: int = 256,
    auxiliary_num_convs: int = 1,
    auxiliary_concat_input: bool = False,
    auxiliary_loss_weight: float = 0.4,
    ignore_index: int = 255,
) -> UperNetConfig:
    """A transformers ``UperNetConfig`` over an InternImage backbone.

    The defaults are upstream's ADE20K head (channels 512, pool scales 1/2/3/6, an FCN auxiliary
    head of 256 channels on stage 3 with loss weight 0.4).

    Raises:
        ConfigError: The backbone does not return all four stages (UperNet reads every one).
    """
    if list(backbone.out_features) != list(STAGE_NAMES):
        raise ConfigError(
            f"UperNet needs all four stages of the backbone, got out_features "
            f"{backbone.out_features}"
        )
    if num_classes < 2:
        raise ConfigError(f"a segmentation head needs at least 2 classes, got {num_classes}")
    return UperNetConfig(
        backbone_config=backbone,
        hidden_size=hidden_size,
        pool_scales=list(pool_scales),
        use_auxiliary_head=auxiliary_head,
        auxiliary_in_channels=None,
        auxiliary_channels=auxiliary_channels,
        auxiliary_num_convs=auxiliary_num_convs,
        auxiliary_concat_input=auxiliary_concat_input,
        auxiliary_loss_weight=auxiliary_loss_weight,
        loss_ignore_index=ignore_index,
        num_labels=num_classes,
    )


def _unknown(section: str, values: Mapping[str, Any], known: Sequence[str]) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown {section} setting(s) {', '.join(map(repr, unknown))}; known: "
            f"{', '.join(sorted(known))}"
        )


def _expect(section: str, key: str, value: Any, expected: Any) -> None:
    if value != expected:
        raise ConfigError(
            f"{section}.{key}={value!r} is not supported here (transformers' UperNet has "
            f"{expected!r})"
        )


def upernet_from_mmseg_config(model_cfg: Mapping[str, Any]) -> UperNetForSemanticSegmentation:
    """An untrained UperNet with the architecture of an upstream mmseg ``model`` dict.

    Args:
        model_cfg: ``{"backbone": upstream InternImage or FlashInternImage arguments (with
            ``type`` as upstream's configs write it), "decode_head": UPerHead
            arguments, "auxiliary_head": FCNHead arguments (optional)}``, as in upstream's
            ``configs/ade20k/*.py`` (training-only entries such as ``loss_decode``, ``norm_cfg``
            and ``dropout_ratio`` are accepted and not used).

    Raises:
        ConfigError: An unknown entry, or a setting transformers' UperNet cannot express.
    """
    _unknown("model", model_cfg, ("backbone", "decode_head", "auxiliary_head", *_MODEL_IGNORED))
    for part in ("backbone", "decode_head"):
        if part not in model_cfg:
            raise ConfigError(f"the model config has no {part!r} entry")
    backbone_args = dict(model_cfg["backbone"])
    out_indices = tuple(backbone_args.get("out_indices", (0, 1, 2, 3)))
    _expect("backbone", "out_indices", out_indices, (0, 1, 2, 3))
    backbone = InternImageHFConfig(
        **dense_backbone_arguments(backbone_args, _BACKBONE_IGNORED), out_indices=[0, 1, 2, 3],
    )
    widths = [backbone.channels * 2**i for i in range(4)]

    head = dict(model_cfg["decode_head"])
    _unknown("decode_head", head, ("in_channels", "in_index", "channels", "pool_scales",
                                   "num_classes", "align_corners", *_HEAD_IGNORED))
    _expect("decode_head", "in_channels", list(head.get("in_channels", widths)), widths)
    _expect("decode_head", "in_index", list(head.get("in_index", [0, 1, 2, 3])), [0, 1, 2, 3])
    _expect("decode_head", "align_corners", head.get("align_corners", False), False)
    num_classes = int(head["num_classes"])

    aux = model_cfg.get("auxiliary_head")
    aux_settings: dict[str, Any] = {"auxiliary_head": aux is not None}
    if aux is not None:
        aux = dict(aux)
        _unknown("auxiliary_head", aux, ("in_channels", "in_index", "channels", "num_convs",
                                         "concat_input", "num_classes", "align_corners",
                                         *_HEAD_IGNORED))
        # transformers' auxiliary head always reads stage 3 (stride 16).
        _expect("auxiliary_head", "in_index", aux.get("in_index", 2), 2)
        _expect("auxiliary_head", "in_channels", aux.get("in_channels", widths[2]), widths[2])
        _expect("auxiliary_head", "num_classes", aux.get("num_classes", num_classes), num_classes)
        _expect("auxiliary_head", "align_corners", aux.get("align_corners", False), False)
        loss = aux.get("loss_decode") or {}
        aux_settings.update(
            auxiliary_channels=int(aux.get("channels", 256)),
            auxiliary_num_convs=int(aux.get("num_convs", 2)),
            auxiliary_concat_input=bool(aux.get("concat_input", True)),
            auxiliary_loss_weight=float(loss.get("loss_weight", 0.4)),
        )
    config = upernet_config(
        backbone, num_classes=num_classes, hidden_size=int(head.get("channels", 512)),
        pool_scales=tuple(head.get("pool_scales", (1, 2, 3, 6))), **aux_settings,
    )
    return UperNetForSemanticSegmentation(config)


# (pattern, replacement) applied in order to every mmseg head key.
_HEAD_RENAMES = (
    (re.compile(r"\.bn\."), ".batch_norm."),
    (re.compile(r"\.conv_seg\."), ".classifier."),
)


def convert_mmseg_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmseg ``EncoderDecoder`` keys -> keys of transformers' UperNet over InternImage."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            new = "backbone.model." + key[len("backbone."):]
        else:
            new = key
            for pattern, replacement in _HEAD_RENAMES:
                new = pattern.sub(replacement, new)
        out[new] = value
    return out


def from_mmseg(
    checkpoint: str | os.PathLike[str] | Mapping[str, Any],
    model_cfg: Mapping[str, Any],
) -> UperNetForSemanticSegmentation:
    """Build UperNet from an upstream mmseg ``model`` config and load an mmseg checkpoint.

    The model is in eval mode; called on ``[N, 3, H, W]`` it returns an output whose ``.logits``
    are ``[N, classes, H, W]``, which is mmseg's whole-image inference before the argmax.

    Args:
        checkpoint: The ``.pth`` file (``{"meta", "state_dict"}``), or the loaded dict.
        model_cfg: See :func:`upernet_from_mmseg_config`.

    Raises:
        CheckpointMismatchError: A key of the checkpoint or of the model is not matched, or a
            shape differs (every key is listed).
        CheckpointFileError: The file is not a readable checkpoint.
    """
    model = upernet_from_mmseg_config(model_cfg)
    load_converted_strictly(model, checkpoint, convert_mmseg_state_dict,
                            source="the mmseg checkpoint")
    return model.eval()
