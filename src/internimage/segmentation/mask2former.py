"""Mask2Former over InternImage through transformers, and upstream's mmseg checkpoints.

Upstream's Mask2Former (its ``mmseg_custom``: ``Mask2FormerHead`` with the
``MSDeformAttnPixelDecoder``) is transformers' ``Mask2FormerForUniversalSegmentation`` module for
module, with the same numerics; only the names differ. :func:`convert_mask2former_state_dict`
renames an mmseg checkpoint's keys (and splits the decoder self-attention's packed projection
into q/k/v), :func:`mask2former_semantic_logits` is upstream's semantic inference: transformers'
own post-processor resizes the mask logits to 384 x 384 first, which upstream does not.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

from internimage.errors import ConfigError
from internimage.models.hf import STAGE_NAMES, InternImageHFConfig

__all__ = [
    "convert_mask2former_state_dict",
    "mask2former_config",
    "mask2former_from_mmseg",
    "mask2former_from_mmseg_config",
    "mask2former_semantic_logits",
]

# Weight of the "no object" class in the classification loss, as upstream's configs set it.
_NO_OBJECT_WEIGHT = 0.1


def mask2former_config(
    backbone: InternImageHFConfig,
    *,
    num_classes: int,
    hidden_dim: int = 256,
    num_queries: int = 100,
    num_heads: int = 8,
    encoder_ffn: int = 1024,
    decoder_ffn: int = 2048,
    encoder_layers: int = 6,
    decoder_layers: int = 9,
) -> Mask2FormerConfig:
    """A transformers ``Mask2FormerConfig`` over an InternImage (or FlashInternImage) backbone.

    The defaults are upstream's Cityscapes / Mapillary / NYU / Pascal Context head; its ADE20K
    and COCO-Stuff head has 1024 channels, 32 heads, FFNs of 4096 and 200 queries.

    Args:
        backbone: The backbone's config, returning all four stages.
        num_classes: Classes (without "no object").
        hidden_dim: Width of the pixel decoder, the queries and the mask features.
        num_queries: Object queries.
        num_heads: Attention heads of the pixel decoder and of the transformer decoder.
        encoder_ffn: Hidden width of the pixel decoder's FFNs.
        decoder_ffn: Hidden width of the transformer decoder's FFNs.
        encoder_layers: Deformable-attention layers of the pixel decoder.
        decoder_layers: Transformer decoder layers (upstream's ``num_layers``).

    Raises:
        ConfigError: The backbone does not return all four stages.
    """
    if list(backbone.out_features) != list(STAGE_NAMES):
        raise ConfigError(f"Mask2Former needs all four stages of the backbone, got "
                          f"out_features {backbone.out_features}")
    if num_classes < 1:
        raise ConfigError(f"Mask2Former needs at least one class, got {num_classes}")
    return Mask2FormerConfig(
        backbone_config=backbone, feature_size=hidden_dim, mask_feature_size=hidden_dim,
        hidden_dim=hidden_dim, encoder_feedforward_dim=encoder_ffn, dim_feedforward=decoder_ffn,
        num_attention_heads=num_heads, encoder_layers=encoder_layers,
        # transformers counts the prediction from the learned queries as a layer.
        decoder_layers=decoder_layers + 1, num_queries=num_queries, num_labels=num_classes,
        no_object_weight=_NO_OBJECT_WEIGHT,
    )


# Renames of the pixel decoder and the heads (after the "decode_head." prefix), in order; the
# transformer decoder's self-attention is split apart.
_RENAMES: tuple[tuple[str, str], ...] = (
    ("pixel_decoder.level_encoding.weight", "model.pixel_level_module.decoder.level_embed"),
    ("pixel_decoder.lateral_convs.0.conv.", "model.pixel_level_module.decoder.adapter_1.0."),
    ("pixel_decoder.lateral_convs.0.gn.", "model.pixel_level_module.decoder.adapter_1.1."),
    ("pixel_decoder.output_convs.0.conv.", "model.pixel_level_module.decoder.layer_1.0."),
    ("pixel_decoder.output_convs.0.gn.", "model.pixel_level_module.decoder.layer_1.1."),
    ("pixel_decoder.mask_feature.", "model.pixel_level_module.decoder.mask_projection."),
    ("transformer_decoder.post_norm.", "model.transformer_module.decoder.layernorm."),
    ("query_embed.", "model.transformer_module.queries_embedder."),
    ("query_feat.", "model.transformer_module.queries_features."),
    ("level_embed.", "model.transformer_module.level_embed."),
    ("cls_embed.", "class_predictor."),
)
_MASK_EMBED = {"0": "0", "2": "1", "4": "2"}
_FFN = {"ffns.0.layers.0.0.": "fc1.", "ffns.0.layers.1.": "fc2."}
_ENCODER_NORMS = {"0": "self_attn_layer_norm", "1": "final_layer_norm"}
_DECODER_NORMS = {"0": "cross_attn_layer_norm", "1": "self_attn_layer_norm",
                  "2": "final_layer_norm"}


def _layer_key(rest: str, norms: Mapping[str, str], attentions: Mapping[str, str]) -> str | None:
    """One encoder or decoder layer's key (after ``layers.l.``) in transformers' names."""
    for old, new in _FFN.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    if rest.startswith("norms."):
        index, leaf = rest[len("norms."):].split(".", 1)
        return f"{norms[index]}.{leaf}" if index in norms else None
    if rest.startswith("attentions."):
        index, leaf = rest[len("attentions."):].split(".", 1)
        return f"{attentions[index]}.{leaf}" if index in attentions else None
    return None


def convert_mask2former_state_dict(
    state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """mmseg ``EncoderDecoderMask2Former`` keys -> transformers' Mask2Former over InternImage.

    Keys outside the map pass through unchanged (so that a strict load names them). The loss's
    class weights, which transformers keeps as a buffer and mmseg files do not hold, are made
    from the classifier's size (1 per class, 0.1 for "no object").
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            out["model.pixel_level_module.encoder.model." + key[len("backbone."):]] = value
            continue
        if not key.startswith("decode_head."):
            out[key] = value
            continue
        rest = key[len("decode_head."):]
        new = _convert_head_key(rest, value, out)
        if new is not None:
            out[new] = value
    classifier = out.get("class_predictor.weight")
    if classifier is not None:
        weight = torch.ones(classifier.shape[0], dtype=torch.float32, device=classifier.device)
        weight[-1] = _NO_OBJECT_WEIGHT
        out["criterion.empty_weight"] = weight
    return out


def _convert_head_key(rest: str, value: torch.Tensor, out: dict[str, torch.Tensor]) -> str | None:
    """The transformers key of a ``decode_head.`` entry (``None`` when it was written into
    ``out`` already, as the split self-attention is); unknown keys keep their name."""
    for old, new in _RENAMES:
        if rest == old or (old.endswith(".") and rest.startswith(old)):
            return new + rest[len(old):]
    if rest.startswith("pixel_decoder.input_convs."):
        index, part, leaf = rest[len("pixel_decoder.input_convs."):].split(".", 2)
        slot = {"conv": "0", "gn": "1"}.get(part)
        if slot is not None:
            return f"model.pixel_level_module.decoder.input_projections.{index}.{slot}.{leaf}"
    if rest.startswith("pixel_decoder.encoder.layers."):
        index, layer_rest = rest[len("pixel_decoder.encoder.layers."):].split(".", 1)
        converted = _layer_key(layer_rest, _ENCODER_NORMS, {"0": "self_attn"})
        if converted is not None:
            return f"model.pixel_level_module.decoder.encoder.layers.{index}.{converted}"
    if rest.startswith("transformer_decoder.layers."):
        index, layer_rest = rest[len("transformer_decoder.layers."):].split(".", 1)
        prefix = f"model.transformer_module.decoder.layers.{index}."
        if layer_rest.startswith("attentions.1.attn.in_proj_"):
            # The self-attention's packed q/k/v projection, in thirds.
            leaf = "weight" if layer_rest.endswith("weight") else "bias"
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3), strict=True):
                out[f"{prefix}self_attn.{name}.{leaf}"] = part
            return None
        converted = _layer_key(layer_rest.replace(".attn.", ".", 1), _DECODER_NORMS,
                               {"0": "cross_attn", "1": "self_attn"})
        if converted is not None:
            return prefix + converted
    if rest.startswith("mask_embed."):
        index, leaf = rest[len("mask_embed."):].split(".", 1)
        if index in _MASK_EMBED:
            return (f"model.transformer_module.decoder.mask_predictor.mask_embedder."
                    f"{_MASK_EMBED[index]}.0.{leaf}")
    return "decode_head." + rest


def mask2former_semantic_logits(
    outputs: Any, size: tuple[int, int]
) -> torch.Tensor:
    """Upstream's semantic segmentation from Mask2Former's last predictions.

    ``softmax`` over the classes without "no object", ``sigmoid`` of the mask logits, summed
    over the queries at stride 4, then resized bilinearly (align_corners False) to ``size``.

    Args:
        outputs: ``Mask2FormerForUniversalSegmentation``'s output (``class_queries_logits``
            ``[N, Q, K+1]``, ``masks_queries_logits`` ``[N, Q, H/4, W/4]``).
        size: ``(H, W)`` of the input.

    Returns:
        ``[N, K, H, W]`` class scores; their argmax is the segmentation.
    """
    classes = outputs.class_queries_logits.softmax(-1)[..., :-1]  # [N, Q, K]
    masks = outputs.masks_queries_logits.sigmoid()  # [N, Q, h, w]
    scores = torch.einsum("nqk,nqhw->nkhw", classes, masks)
    return F.interpolate(scores, size=size, mode="bilinear", align_corners=False)


def mask2former_from_mmseg_config(
    model_cfg: Mapping[str, Any]
) -> Mask2FormerForUniversalSegmentation:
    """An untrained Mask2Former with the architecture of an upstream mmseg ``model`` dict
    (``backbone`` and a ``Mask2FormerHead`` ``decode_head``, as in upstream's configs).

    Raises:
        ConfigError: A setting transformers' Mask2Former cannot express.
    """
    from internimage.models.flash_internimage import dense_backbone_arguments

    backbone_args = dict(model_cfg["backbone"])
    out = list(backbone_args.get("out_indices", (0, 1, 2, 3)))
    if out != [0, 1, 2, 3]:
        raise ConfigError(f"backbone.out_indices={out}: Mask2Former reads all four stages")
    backbone = InternImageHFConfig(
        **dense_backbone_arguments(backbone_args, ("type", "out_indices", "init_cfg",
                                                   "pretrained")),
        out_indices=[0, 1, 2, 3],
    )
    head = model_cfg["decode_head"]
    pixel = head["pixel_decoder"]["encoder"]
    layer = pixel["transformerlayers"]
    decoder = head["transformer_decoder"]
    expected = {
        "decode_head.num_transformer_feat_level": (head.get("num_transformer_feat_level", 3), 3),
        "pixel_decoder attention levels": (layer["attn_cfgs"].get("num_levels", 3), 3),
        "pixel_decoder attention points": (layer["attn_cfgs"].get("num_points", 4), 4),
        "decode_head.enforce_decoder_input_project": (
            head.get("enforce_decoder_input_project", False), False),
        "decode_head.feat_channels == out_channels": (head["feat_channels"],
                                                      head["out_channels"]),
    }
    for what, (value, wanted) in expected.items():
        if value != wanted:
            raise ConfigError(f"{what}={value!r} is not supported (transformers' Mask2Former "
                              f"has {wanted!r})")
    heads = decoder["transformerlayers"]["attn_cfgs"]["num_heads"]
    if layer["attn_cfgs"].get("num_heads", 8) != heads:
        raise ConfigError("the pixel decoder and the transformer decoder need the same number "
                          "of attention heads in transformers' Mask2Former")
    config = mask2former_config(
        backbone, num_classes=int(head["num_classes"]), hidden_dim=int(head["feat_channels"]),
        num_queries=int(head["num_queries"]), num_heads=int(heads),
        encoder_ffn=int(layer["ffn_cfgs"]["feedforward_channels"]),
        decoder_ffn=int(decoder["transformerlayers"]["ffn_cfgs"]["feedforward_channels"]),
        encoder_layers=int(pixel["num_layers"]), decoder_layers=int(decoder["num_layers"]),
    )
    return Mask2FormerForUniversalSegmentation(config)


def mask2former_from_mmseg(
    checkpoint: str | os.PathLike[str] | Mapping[str, Any], model_cfg: Mapping[str, Any]
) -> Mask2FormerForUniversalSegmentation:
    """Build Mask2Former from an upstream mmseg ``model`` dict and load its checkpoint strictly.

    The model is in eval mode; :func:`mask2former_semantic_logits` of its output is mmseg's
    whole-image ``seg_logits``.

    Raises:
        CheckpointMismatchError: A key is missing, unexpected or wrongly shaped (all listed).
        CheckpointFileError: The file is not a readable checkpoint.
        ConfigError: See :func:`mask2former_from_mmseg_config`.
    """
    from internimage.models.checkpoint import load_converted_strictly

    model = mask2former_from_mmseg_config(model_cfg)
    load_converted_strictly(model, checkpoint, convert_mask2former_state_dict,
                            source="the mmseg checkpoint")
    return model.eval()
