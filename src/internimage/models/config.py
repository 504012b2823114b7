"""Architecture settings of InternImage, the released variants and the paper's scaling rules.

The seven released variants (T, S, B, L, XL, H, G) copy the upstream configurations. Four small
variants for CPU work are derived with the paper's rules:

- stacking rule (:func:`stacking_config`): stage i (1-based) has ``C_i = 2^(i-1) * C1`` channels
  and ``G_i = C_i / C'`` groups; depths are ``(L1, L1, L3, L1)`` with ``L1 <= L3``, so the total
  depth is ``D = 3*L1 + L3``;
- scaling rule (:func:`scaled_config`): from a base model, ``D' = alpha^phi * D`` and
  ``C1' = beta^phi * C1`` with ``alpha = 1.09``, ``beta = 1.36``.

Small variants (InternImage-T settings otherwise: pre-norm blocks, no layer scale; ``C' = 8`` so
that the narrowest stage still has two groups). Params with 1000 classes; MACs at 224 px by the
convention of :func:`internimage.count_macs`:

=================  =====  =====  ============  =============  ========  ========
variant            phi    C1     depths        groups         params    MACs@224
=================  =====  =====  ============  =============  ========  ========
internimage_atto   -4     16     3, 3, 12, 3   2, 4, 8, 16    1.72M     0.27G
internimage_femto  -3     24     3, 3, 14, 3   3, 6, 12, 24   3.94M     0.63G
internimage_pico   -2     32     3, 3, 16, 3   4, 8, 16, 32   7.30M     1.19G
internimage_nano   -1     48     4, 4, 16, 4   6, 12, 24, 48  18.22M    2.94G
=================  =====  =====  ============  =============  ========  ========
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from internimage.layers.dcnv3 import MASK_NORMALIZATIONS
from internimage.layers.dcnv3 import WEIGHT_SHARING as DCN_WEIGHTS

__all__ = [
    "ALPHA",
    "BETA",
    "CORE_OPS",
    "DCN_WEIGHTS",
    "InternImageConfig",
    "MASK_NORMALIZATIONS",
    "VARIANTS",
    "VariantInfo",
    "check_ablation_options",
    "scaled_config",
    "stacking_config",
]

#: Token mixers: InternImage's DCNv3, FlashInternImage's DCNv4.
CORE_OPS = ("DCNv3", "DCNv4")

#: Depth growth per unit of phi in the paper's scaling rule.
ALPHA = 1.09
#: Width growth per unit of phi in the paper's scaling rule.
BETA = 1.36

_DROP_PATH_TYPES = ("linear", "uniform")


def check_ablation_options(
    dcn_weights: str, mask_normalization: str, dcn_groups: int | None
) -> None:
    """Raise ``ValueError`` naming the field for a value the ablation options do not take
    (:data:`DCN_WEIGHTS`, :data:`MASK_NORMALIZATIONS`; ``dcn_groups`` a positive int or None).
    The first value of each tuple is the paper's DCNv3."""
    if dcn_weights not in DCN_WEIGHTS:
        raise ValueError(f"dcn_weights must be one of {DCN_WEIGHTS}, got {dcn_weights!r}")
    if mask_normalization not in MASK_NORMALIZATIONS:
        raise ValueError(
            f"mask_normalization must be one of {MASK_NORMALIZATIONS}, got {mask_normalization!r}"
        )
    if dcn_groups is not None and (
        isinstance(dcn_groups, bool) or not isinstance(dcn_groups, int) or dcn_groups <= 0
    ):
        raise ValueError(f"dcn_groups must be a positive integer or None, got {dcn_groups!r}")


@dataclass(frozen=True)
class InternImageConfig:
    """Settings of one InternImage network (upstream constructor names).

    Attributes:
        channels: Width C of the first stage; stage i has ``C * 2**i``.
        depths: Blocks per stage (4 stages).
        groups: DCNv3 groups per stage.
        mlp_ratio: Hidden width of the MLP relative to C.
        layer_scale: Initial value of the per-channel residual scales ``gamma1``/``gamma2``
            (``None``: no layer scale).
        offset_scale: DCNv3 offset scale (2.0 for L and XL).
        post_norm: Normalise the residual branch output instead of its input.
        res_post_norm: Pre-norm blocks with an extra norm on each branch output (only without
            layer scale and post norm).
        dw_kernel_size: Depthwise kernel of the offset branch (``None``: 3).
        level2_post_norm: Insert LayerNorms after some blocks of stage 2.
        level2_post_norm_block_ids: Block indices of stage 2 followed by such a norm.
        center_feature_scale: Gate between sampled and projected features in DCNv3.
        use_clip_projector: Use the attention-pooling head of H/G instead of the conv head.
        remove_center: Drop the centre point of the DCNv3 kernel.
        cls_scale: Width of the conv head relative to the last stage.
        drop_rate: Dropout after the stem and inside the MLPs (training setting).
        drop_path_rate: Largest stochastic-depth rate (training setting).
        drop_path_type: ``"linear"`` (0 up to the rate over all blocks) or ``"uniform"``.
        dcn_weights: Ablation (paper Sec. 3.1, Fig. 4): ``"shared"`` (DCNv3: one output
            projection after the points are aggregated) or ``"unshared"`` (DCNv2-style: a
            ``C x C`` projection per sampling point, ``(P-1)*C*C`` more parameters per block).
        dcn_groups: Ablation: the DCNv3 group count of every stage (e.g. 1, a single group as in
            DCNv2); it overrides ``groups`` and must divide every stage's width. ``None``: use
            ``groups``.
        mask_normalization: Ablation: modulation scalars normalised by ``"softmax"`` over the
            points of a group (DCNv3) or by an element-wise ``"sigmoid"`` (DCNv2).
        core_op: ``"DCNv3"`` (InternImage) or ``"DCNv4"`` (FlashInternImage: the same network
            with DCNv4 blocks, whose point weights are used as given; ``dw_kernel_size`` then
            adds a depthwise conv before the offset projection, without norm or activation).
        dcn_output_bias: FlashInternImage: bias of the DCNv4 output projection (DCNv3 always
            has one).
        mlp_fc2_bias: FlashInternImage: bias of the MLP's second linear (DCNv3 blocks always
            have one).

    The three ablation fields are not upstream constructor arguments; at their defaults the
    network, its state-dict keys and its upstream arguments are those of the release.
    """

    channels: int
    depths: tuple[int, ...]
    groups: tuple[int, ...]
    mlp_ratio: float = 4.0
    layer_scale: float | None = None
    offset_scale: float = 1.0
    post_norm: bool = False
    res_post_norm: bool = False
    dw_kernel_size: int | None = None
    level2_post_norm: bool = False
    level2_post_norm_block_ids: tuple[int, ...] | None = None
    center_feature_scale: bool = False
    use_clip_projector: bool = False
    remove_center: bool = False
    cls_scale: float = 1.5
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    drop_path_type: str = "linear"
    dcn_weights: str = "shared"
    dcn_groups: int | None = None
    mask_normalization: str = "softmax"
    core_op: str = "DCNv3"
    dcn_output_bias: bool = True
    mlp_fc2_bias: bool = True

    def __post_init__(self) -> None:
        # Accept lists (e.g. from JSON) but store tuples so that the config stays hashable.
        for name in ("depths", "groups", "level2_post_norm_block_ids"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(int(v) for v in value))
        if not isinstance(self.channels, int) or self.channels <= 0 or self.channels % 2:
            raise ValueError(f"channels must be a positive even integer, got {self.channels!r}")
        if len(self.depths) != 4 or len(self.groups) != 4:
            raise ValueError(
                f"depths and groups need 4 entries (one per stage), got depths={self.depths}, "
                f"groups={self.groups}"
            )
        if any(d <= 0 for d in self.depths) or any(g <= 0 for g in self.groups):
            raise ValueError(f"depths and groups must be positive: {self.depths}, {self.groups}")
        for i, g in enumerate(self.groups):
            width = self.channels * 2**i
            if width % g:
                raise ValueError(
                    f"stage {i} has {width} channels, not divisible by groups[{i}]={g}"
                )
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        if self.dw_kernel_size is not None and (
            self.dw_kernel_size <= 0 or self.dw_kernel_size % 2 == 0
        ):
            raise ValueError(f"dw_kernel_size must be odd and positive, got {self.dw_kernel_size}")
        if self.level2_post_norm:
            ids = self.level2_post_norm_block_ids
            if not ids:
                raise ValueError("level2_post_norm needs level2_post_norm_block_ids")
            bad = [b for b in ids if not 0 <= b < self.depths[2]]
            if bad:
                raise ValueError(
                    f"level2_post_norm_block_ids {bad} are outside stage 2's "
                    f"{self.depths[2]} blocks"
                )
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate}")
        if self.drop_path_type not in _DROP_PATH_TYPES:
            raise ValueError(
                f"drop_path_type must be one of {_DROP_PATH_TYPES}, got {self.drop_path_type!r}"
            )
        check_ablation_options(self.dcn_weights, self.mask_normalization, self.dcn_groups)
        if self.core_op not in CORE_OPS:
            raise ValueError(f"core_op must be one of {CORE_OPS}, got {self.core_op!r}")
        if self.core_op == "DCNv3" and not (self.dcn_output_bias and self.mlp_fc2_bias):
            raise ValueError("dcn_output_bias and mlp_fc2_bias are FlashInternImage (core_op "
                             "'DCNv4') settings; InternImage's DCNv3 blocks always have both "
                             "biases")
        if self.core_op == "DCNv4":
            # FlashInternImage's block: DCNv4 uses its point weights as given (no softmax) and
            # has neither the centre-feature gate nor the ablations of the DCNv3 layer.
            unsupported = [
                name for name, value, paper in (
                    ("center_feature_scale", self.center_feature_scale, False),
                    ("use_clip_projector", self.use_clip_projector, False),
                    ("dcn_weights", self.dcn_weights, "shared"),
                    ("mask_normalization", self.mask_normalization, "softmax"),
                ) if value != paper
            ]
            if unsupported:
                raise ValueError(f"{', '.join(unsupported)} are not FlashInternImage (DCNv4) "
                                 f"settings; keep them at their defaults with core_op='DCNv4'")
        if self.dcn_groups is not None:
            g = self.dcn_groups
            bad = [c for c in self.stage_channels if c % g]
            if bad:
                raise ValueError(
                    f"dcn_groups={g} must divide every stage's width {self.stage_channels}"
                )

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names accepted as overrides."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **overrides: Any) -> InternImageConfig:
        """Copy with some fields changed.

        Raises:
            ValueError: An override is not a field (the message lists the valid names).
        """
        valid = self.field_names()
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown InternImage setting(s) {', '.join(map(repr, unknown))}; valid: "
                f"{', '.join(valid)}"
            )
        return dataclasses.replace(self, **overrides)

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Width of each stage: C, 2C, 4C, 8C."""
        return tuple(self.channels * 2**i for i in range(4))

    @property
    def stage_groups(self) -> tuple[int, ...]:
        """DCNv3 groups each stage is built with: ``dcn_groups`` everywhere if set, else
        ``groups``."""
        if self.dcn_groups is not None:
            return (self.dcn_groups,) * len(self.groups)
        return self.groups

    @property
    def is_ablation(self) -> bool:
        """Whether an ablation option (``dcn_weights``, ``dcn_groups``, ``mask_normalization``)
        leaves the paper's DCNv3."""
        return (
            self.dcn_weights != DCN_WEIGHTS[0]
            or self.dcn_groups is not None
            or self.mask_normalization != MASK_NORMALIZATIONS[0]
        )


def stacking_config(
    c1: int, group_channels: int, l1: int, l3: int, **settings: Any
) -> InternImageConfig:
    """Configuration from the paper's stacking rule.

    Args:
        c1: Width of the first stage C1 (a multiple of ``group_channels``, even).
        group_channels: Channels per group C' (the same in every stage).
        l1: Depth of stages 1, 2 and 4.
        l3: Depth of stage 3 (at least ``l1``).
        **settings: Other :class:`InternImageConfig` fields.

    Returns:
        ``channels=c1``, ``groups = (C_i / C')``, ``depths = (l1, l1, l3, l1)``.

    Raises:
        ValueError: The rule's constraints do not hold.
    """
    if c1 <= 0 or group_channels <= 0 or c1 % group_channels:
        raise ValueError(f"C1={c1} must be a positive multiple of C'={group_channels}")
    if not 1 <= l1 <= l3:
        raise ValueError(f"the stacking rule needs 1 <= L1 <= L3, got L1={l1}, L3={l3}")
    groups = tuple(c1 * 2**i // group_channels for i in range(4))
    return InternImageConfig(channels=c1, depths=(l1, l1, l3, l1), groups=groups, **settings)


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def scaled_config(
    phi: float,
    *,
    c1: int = 64,
    group_channels: int = 16,
    l1: int = 4,
    l3: int = 18,
    scaled_group_channels: int | None = None,
    **settings: Any,
) -> InternImageConfig:
    """Configuration from the paper's compound scaling rule applied to a base model.

    ``D' = ALPHA**phi * D`` and ``C1' = BETA**phi * C1`` with ``D = 3*L1 + L3``. Rounding:
    ``C1'`` goes to the nearest multiple of C' (at least C'); ``D'`` to the nearest integer;
    ``L1' = max(1, round(L1 * D'/D))`` keeps the base ratio of outer to third-stage depth, and
    ``L3' = max(L1', D' - 3*L1')``. Halves round up.

    Args:
        phi: Scaling exponent (negative shrinks).
        c1: Base first-stage width (InternImage-T: 64).
        group_channels: Base channels per group C' (T: 16).
        l1: Base depth of stages 1, 2, 4 (T: 4).
        l3: Base depth of stage 3 (T: 18).
        scaled_group_channels: C' of the result (default: the base's).
        **settings: Other :class:`InternImageConfig` fields.
    """
    cg = group_channels if scaled_group_channels is None else scaled_group_channels
    depth = 3 * l1 + l3
    new_depth = _round_half_up(ALPHA**phi * depth)
    new_c1 = cg * max(1, _round_half_up(BETA**phi * c1 / cg))
    new_l1 = max(1, _round_half_up(l1 * new_depth / depth))
    new_l3 = max(new_l1, new_depth - 3 * new_l1)
    return stacking_config(new_c1, cg, new_l1, new_l3, **settings)


@dataclass(frozen=True)
class VariantInfo:
    """A named variant: its configuration and how it is evaluated.

    Attributes:
        name: Model name for :func:`internimage.create_model`.
        config: Architecture and default training settings.
        image_size: Native input side in pixels.
        top1: ImageNet-1K top-1 of the released weights (``None`` without released weights).
        pretrained: Name of the released checkpoint (``None`` without one).
    """

    name: str
    config: InternImageConfig
    image_size: int
    top1: float | None = None
    pretrained: str | None = None


# The small variants shrink InternImage-T (the defaults of scaled_config) with C' = 8.
_SMALL = {"scaled_group_channels": 8}
# FlashInternImage's T/S/B blocks: DCNv4, no bias after the DCNv4 output projection or fc2.
_FLASH: dict[str, Any] = {"core_op": "DCNv4", "dcn_output_bias": False, "mlp_fc2_bias": False}

VARIANTS: dict[str, VariantInfo] = {
    v.name: v
    for v in (
        VariantInfo(
            "internimage_atto",
            scaled_config(-4, **_SMALL, drop_path_rate=0.0),
            224,
        ),
        VariantInfo(
            "internimage_femto",
            scaled_config(-3, **_SMALL, drop_path_rate=0.05),
            224,
        ),
        VariantInfo(
            "internimage_pico",
            scaled_config(-2, **_SMALL, drop_path_rate=0.05),
            224,
        ),
        VariantInfo(
            "internimage_nano",
            scaled_config(-1, **_SMALL, drop_path_rate=0.1),
            224,
        ),
        VariantInfo(
            "internimage_t",
            InternImageConfig(64, (4, 4, 18, 4), (4, 8, 16, 32), drop_path_rate=0.1),
            224, 83.5, "internimage_t_1k_224",
        ),
        VariantInfo(
            "internimage_s",
            InternImageConfig(
                80, (4, 4, 21, 4), (5, 10, 20, 40), layer_scale=1e-5, post_norm=True,
                drop_path_rate=0.4,
            ),
            224, 84.2, "internimage_s_1k_224",
        ),
        VariantInfo(
            "internimage_b",
            InternImageConfig(
                112, (4, 4, 21, 4), (7, 14, 28, 56), layer_scale=1e-5, post_norm=True,
                drop_path_rate=0.5,
            ),
            224, 84.9, "internimage_b_1k_224",
        ),
        VariantInfo(
            "internimage_l",
            InternImageConfig(
                160, (5, 5, 22, 5), (10, 20, 40, 80), layer_scale=1e-5, offset_scale=2.0,
                post_norm=True, drop_path_rate=0.1,
            ),
            384, 87.7, "internimage_l_22kto1k_384",
        ),
        VariantInfo(
            "internimage_xl",
            InternImageConfig(
                192, (5, 5, 24, 5), (12, 24, 48, 96), layer_scale=1e-5, offset_scale=2.0,
                post_norm=True, drop_path_rate=0.2,
            ),
            384, 88.0, "internimage_xl_22kto1k_384",
        ),
        VariantInfo(
            "internimage_h",
            InternImageConfig(
                320, (6, 6, 32, 6), (10, 20, 40, 80), res_post_norm=True, dw_kernel_size=5,
                level2_post_norm=True, level2_post_norm_block_ids=(5, 11, 17, 23, 29),
                center_feature_scale=True, use_clip_projector=True, drop_path_rate=0.2,
            ),
            640, 89.6, "internimage_h_22kto1k_640",
        ),
        VariantInfo(
            "internimage_g",
            InternImageConfig(
                512, (2, 2, 48, 4), (16, 32, 64, 128), post_norm=True, dw_kernel_size=5,
                level2_post_norm=True, level2_post_norm_block_ids=tuple(range(5, 48, 6)),
                center_feature_scale=True, use_clip_projector=True, drop_path_rate=0.4,
            ),
            512, 90.1, "internimage_g_22kto1k_512",
        ),
        # FlashInternImage: the same networks with DCNv4 blocks (upstream OpenGVLab/DCNv4).
        *(
            VariantInfo(f"flash_internimage_{size}",
                        scaled_config(phi, **_SMALL, **_FLASH, drop_path_rate=rate), 224)
            for size, phi, rate in (("atto", -4, 0.0), ("femto", -3, 0.05),
                                    ("pico", -2, 0.05), ("nano", -1, 0.1))
        ),
        VariantInfo(
            "flash_internimage_t",
            InternImageConfig(64, (4, 4, 18, 4), (4, 8, 16, 32), drop_path_rate=0.1, **_FLASH),
            224, 83.6, "flash_intern_image_t_1k_224",
        ),
        VariantInfo(
            "flash_internimage_s",
            InternImageConfig(
                80, (4, 4, 21, 4), (5, 10, 20, 40), layer_scale=1e-5, post_norm=True,
                dw_kernel_size=3, drop_path_rate=0.4, **_FLASH,
            ),
            224, 84.4, "flash_intern_image_s_1k_224",
        ),
        VariantInfo(
            "flash_internimage_b",
            InternImageConfig(
                112, (4, 4, 21, 4), (7, 14, 28, 56), layer_scale=1e-5, offset_scale=0.5,
                post_norm=True, dw_kernel_size=3, drop_path_rate=0.5, **_FLASH,
            ),
            224, 84.9, "flash_intern_image_b_1k_224",
        ),
        VariantInfo(
            "flash_internimage_l",
            InternImageConfig(
                160, (5, 5, 22, 5), (10, 20, 40, 80), layer_scale=1e-5, offset_scale=2.0,
                post_norm=True, dw_kernel_size=3, drop_path_rate=0.1,
                **{**_FLASH, "dcn_output_bias": True, "mlp_fc2_bias": True},
            ),
            384, 88.1, "flash_intern_image_l_22kto1k_384",
        ),
    )
}
