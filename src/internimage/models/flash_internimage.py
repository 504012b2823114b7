"""FlashInternImage (Xiong et al., arXiv 2401.06197): InternImage with DCNv4 blocks.

The network is :class:`~internimage.models.internimage.InternImage` built from a config with
``core_op="DCNv4"``: the same stem, stages, downsampling and heads, with upstream's
``FlashInternImage`` module names (``dcn.value_proj``, ``dcn.offset_mask``,
``dcn.offset_mask_dw``, ``dcn.output_proj``; ``mlp.fc2`` and ``dcn.output_proj`` without bias
unless asked). This module adds the upstream constructor of the family.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from internimage.errors import ConfigError
from internimage.models.config import InternImageConfig
from internimage.models.internimage import (
    FLASH_UPSTREAM_DEFAULTS,
    UPSTREAM_DEFAULTS,
    InternImage,
)

__all__ = ["FlashInternImage", "build_upstream_backbone", "dense_backbone_arguments"]

#: ``backbone.type`` of upstream's dense configs for each family.
_BACKBONE_TYPES = ("InternImage", "FlashInternImage")


class FlashInternImage(InternImage):
    """FlashInternImage classifier (and backbone) with the upstream module layout.

    Args:
        config: Architecture and training settings; ``core_op`` must be ``"DCNv4"``.
        num_classes: Classifier outputs; 0 gives an identity ``head``.
    """

    def __init__(self, config: InternImageConfig, *, num_classes: int = 1000) -> None:
        if config.core_op != "DCNv4":
            raise ValueError(f"FlashInternImage needs core_op='DCNv4', got {config.core_op!r} "
                             f"(use InternImage for DCNv3)")
        super().__init__(config, num_classes=num_classes)

    @classmethod
    def from_upstream_config(  # type: ignore[override]
        cls, cfg: Mapping[str, Any]
    ) -> FlashInternImage:
        """Build from upstream ``FlashInternImage(...)`` constructor arguments.

        Absent keys take upstream's defaults (:data:`FLASH_UPSTREAM_DEFAULTS`: offset_scale
        0.5, no output or fc2 bias); ``with_cp`` turns on gradient checkpointing.

        Raises:
            ValueError: An unknown key (e.g. ``input_shape``) or an unsupported value.
        """
        unknown = sorted(set(cfg) - set(FLASH_UPSTREAM_DEFAULTS))
        if unknown:
            raise ValueError(
                f"unknown upstream FlashInternImage argument(s) {', '.join(map(repr, unknown))}; "
                f"valid: {', '.join(FLASH_UPSTREAM_DEFAULTS)}"
            )
        args = {**FLASH_UPSTREAM_DEFAULTS, **cfg}
        for key, allowed in (("core_op", ("DCNv4",)), ("act_layer", ("GELU",)),
                             ("norm_layer", ("LN",))):
            if args[key] not in allowed:
                raise ValueError(f"unsupported {key}={args[key]!r}; supported: {allowed}")
        num_classes = int(args.pop("num_classes"))
        with_cp = bool(args.pop("with_cp"))
        for key in ("act_layer", "norm_layer"):
            args.pop(key)
        model = cls(InternImageConfig(**args), num_classes=num_classes)
        if with_cp:
            model.set_grad_checkpointing(True)
        return model


def dense_backbone_arguments(
    backbone: Mapping[str, Any], ignored: Sequence[str]
) -> dict[str, Any]:
    """Upstream constructor arguments of a dense config's ``backbone`` dict, of either family.

    Upstream's mmseg/mmdet configs name the family in ``type`` (``"InternImage"`` or
    ``"FlashInternImage"``; ``core_op="DCNv4"`` also says FlashInternImage). FlashInternImage's
    defaults that differ from InternImage's (offset_scale 0.5, no output or fc2 bias) are filled
    in, so the result builds the same network with either family's constructor.

    Args:
        backbone: The ``backbone`` dict.
        ignored: Entries that describe loading or outputs, not the network (left out).

    Raises:
        ConfigError: An unknown family or argument (the message lists the valid ones).
    """
    kind = backbone.get("type", "InternImage")
    if kind not in _BACKBONE_TYPES:
        raise ConfigError(f"backbone.type={kind!r} is not supported; supported: "
                          f"{', '.join(_BACKBONE_TYPES)}")
    flash = kind == "FlashInternImage" or backbone.get("core_op") == "DCNv4"
    known = FLASH_UPSTREAM_DEFAULTS if flash else UPSTREAM_DEFAULTS
    unknown = sorted(set(backbone) - set(known) - set(ignored))
    if unknown:
        raise ConfigError(
            f"unknown backbone setting(s) {', '.join(map(repr, unknown))} for "
            f"{'FlashInternImage' if flash else 'InternImage'}; known: {', '.join(sorted(known))}"
        )
    arguments = {k: v for k, v in backbone.items() if k not in ignored}
    if flash:
        defaults = {k: FLASH_UPSTREAM_DEFAULTS[k]
                    for k in ("core_op", "offset_scale", "dcn_output_bias", "mlp_fc2_bias")}
        arguments = {**defaults, **arguments}
    return arguments


def build_upstream_backbone(arguments: Mapping[str, Any]) -> InternImage:
    """The network of :func:`dense_backbone_arguments`' result (plus ``num_classes`` etc.),
    with the family's constructor."""
    if arguments.get("core_op") == "DCNv4":
        return FlashInternImage.from_upstream_config(arguments)
    return InternImage.from_upstream_config(arguments)
