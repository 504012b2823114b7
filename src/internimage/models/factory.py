"""Building models by name: :func:`create_model` and :func:`list_models`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from internimage.errors import UserError
from internimage.models.checkpoint import (
    extract_state_dict,
    load_backbone_weights,
    load_checkpoint,
    read_checkpoint,
)
from internimage.models.config import VARIANTS, InternImageConfig
from internimage.models.internimage import InternImage, InternImageFeatures
from internimage.models.pretrained import (
    PRETRAINED,
    PretrainedWeights,
    classification_weights,
    resolve_pretrained,
)

__all__ = ["create_model", "list_models"]


def list_models(pretrained: bool = False) -> list[str]:
    """Names accepted by :func:`create_model`, smallest first.

    Args:
        pretrained: Only the variants with released weights.
    """
    return [name for name, info in VARIANTS.items() if info.pretrained or not pretrained]


def create_model(
    name: str,
    *,
    pretrained: bool | str | os.PathLike[str] = False,
    num_classes: int | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] = (0, 1, 2, 3),
    **overrides: Any,
) -> InternImage | InternImageFeatures:
    """Build a named InternImage variant, or the classifier of a released checkpoint.

    Args:
        name: A variant (:func:`list_models`), or a released classifier of the catalogue
            (``internimage.list_pretrained(task="classification")``, e.g.
            ``"internimage_l_22k_192to384"`` or its file name): its variant, with the file's
            classes.
        pretrained: False; True for released weights (a variant's default ImageNet-1K
            classifier, or the named release's file; downloaded through the Hugging Face cache,
            needs ``huggingface_hub``); or a checkpoint path or URL. The checkpoint's classifier
            is kept when ``num_classes`` matches it, otherwise replaced.
        num_classes: Classifier outputs (0: no classifier). Default: the checkpoint's when
            weights are loaded, else the release's, else 1000.
        features_only: Return an :class:`InternImageFeatures` giving the stage maps.
        out_indices: Stages returned by a features-only model.
        **overrides: :class:`~internimage.models.config.InternImageConfig` fields, e.g.
            ``drop_path_rate=0.2`` or ``layer_scale=1e-5``.

    Returns:
        The model, with ``variant`` (the variant's name) and ``pretrained_cfg`` (the
        :class:`~internimage.models.pretrained.PretrainedWeights` of the released checkpoint,
        None without one: evaluation size, crop, interpolation, mean and std) attributes.

    Raises:
        ValueError: Unknown name or override.
    """
    weights: PretrainedWeights | None
    if name in VARIANTS:
        variant, weights = name, PRETRAINED.get(name)
    else:
        try:
            weights = classification_weights(name)
        except UserError:
            raise ValueError(
                f"unknown model {name!r}; available: {', '.join(VARIANTS)}, or a released "
                f"classifier (internimage.list_pretrained(task='classification'))"
            ) from None
        variant = weights.variant
        from internimage.catalog.table import find_release

        if variant not in VARIANTS or not find_release(name).buildable:
            raise ValueError(f"{name} is a {variant} classifier of a kind this library cannot "
                             f"build yet")
        if num_classes is None and pretrained is False:
            num_classes = weights.num_classes
    config = VARIANTS[variant].config.replace(**overrides)
    model_class = _model_class(config)
    if pretrained is False or pretrained is None:
        model = model_class(config, num_classes=1000 if num_classes is None else num_classes)
        return _finish(InternImageFeatures(model, out_indices) if features_only else model,
                       variant, weights)
    path = resolve_pretrained(name, pretrained)
    if features_only:
        # A classifier checkpoint also feeds a feature extractor: its head is not needed, and
        # layer scales it lacks (the dense T adds them to the T classifier) keep 1.0.
        features = InternImageFeatures(model_class(config, num_classes=0), out_indices)
        load_backbone_weights(features, path)
        return _finish(features, variant, weights)
    state = extract_state_dict(read_checkpoint(path))
    head = state.get("head.weight")
    model = model_class(config, num_classes=int(head.shape[0]) if head is not None else 0)
    load_checkpoint(model, state)
    if num_classes is not None and model.num_classes != num_classes:
        model.reset_classifier(num_classes)
    return _finish(model, variant, weights)


def _model_class(config: InternImageConfig) -> type[InternImage]:
    """The family's class: FlashInternImage for DCNv4 blocks, else InternImage."""
    if config.core_op == "DCNv4":
        from internimage.models.flash_internimage import FlashInternImage

        return FlashInternImage
    return InternImage


def _finish(
    model: InternImage | InternImageFeatures, variant: str, weights: PretrainedWeights | None
) -> InternImage | InternImageFeatures:
    # Preprocessing of the released weights (mean/std, size, crop), None without them.
    model.pretrained_cfg = weights
    model.variant = variant
    return model
