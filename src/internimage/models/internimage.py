"""The InternImage network: stem, stages of DCNv3 blocks, downsampling and classification heads.

Inside the stages the layout is channels-last ``[N, H, W, C]``; it is converted only in the stem,
the downsampling convs and the heads. Module names follow the upstream release so that its
checkpoints load unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from internimage.layers import (
    AttentionPooling,
    DCNv3,
    DropPath,
    Mlp,
    batch_norm_nchw,
    layer_norm_nchw,
    layer_norm_nchw_to_nhwc,
    layer_norm_nhwc,
)
from internimage.models.config import InternImageConfig

__all__ = [
    "FLASH_UPSTREAM_DEFAULTS",
    "Block",
    "Downsample",
    "InternImage",
    "InternImageFeatures",
    "Stage",
    "Stem",
    "UPSTREAM_DEFAULTS",
    "upstream_arguments",
]

#: Constructor arguments of the upstream ``InternImage`` class and their defaults.
UPSTREAM_DEFAULTS: dict[str, Any] = {
    "core_op": "DCNv3",
    "channels": 64,
    "depths": (3, 4, 18, 5),
    "groups": (3, 6, 12, 24),
    "num_classes": 1000,
    "mlp_ratio": 4.0,
    "drop_rate": 0.0,
    "drop_path_rate": 0.2,
    "drop_path_type": "linear",
    "act_layer": "GELU",
    "norm_layer": "LN",
    "layer_scale": None,
    "offset_scale": 1.0,
    "post_norm": False,
    "cls_scale": 1.5,
    "with_cp": False,
    "dw_kernel_size": None,
    "use_clip_projector": False,
    "level2_post_norm": False,
    "level2_post_norm_block_ids": None,
    "res_post_norm": False,
    "center_feature_scale": False,
    "remove_center": False,
}


def upstream_arguments(config: InternImageConfig) -> dict[str, Any]:
    """The architecture of one of this library's model configs as upstream ``InternImage(...)``
    constructor arguments (the names are the same; sequences as lists, as configs hold them).

    The ablation fields are not upstream arguments: ``dcn_groups`` becomes ``groups``; unshared
    weights and sigmoid normalisation have no upstream equivalent.

    Raises:
        ValueError: ``config`` uses ``dcn_weights="unshared"`` or ``mask_normalization="sigmoid"``.
    """
    for name, paper in (("dcn_weights", "shared"), ("mask_normalization", "softmax")):
        if getattr(config, name) != paper:
            raise ValueError(
                f"{name}={getattr(config, name)!r} is an ablation with no upstream InternImage "
                f"argument; only {name}={paper!r} converts"
            )
    # FlashInternImage's constructor has no remove_center and adds the two bias switches.
    known = FLASH_UPSTREAM_DEFAULTS if config.core_op == "DCNv4" else UPSTREAM_DEFAULTS
    fields = {
        name: getattr(config, name) for name in InternImageConfig.field_names()
        if name in known and not (name == "core_op" and config.core_op == "DCNv3")
    }
    fields["groups"] = config.stage_groups
    for name in ("depths", "groups", "level2_post_norm_block_ids"):
        if fields.get(name) is not None:
            fields[name] = list(fields[name])
    return fields


#: Defaults of upstream's ``FlashInternImage(...)`` (OpenGVLab/DCNv4): InternImage's, with DCNv4,
#: offset_scale 0.5, the two bias switches off, and no ``remove_center`` argument.
FLASH_UPSTREAM_DEFAULTS: dict[str, Any] = {
    **{k: v for k, v in UPSTREAM_DEFAULTS.items() if k != "remove_center"},
    "core_op": "DCNv4",
    "offset_scale": 0.5,
    "dcn_output_bias": False,
    "mlp_fc2_bias": False,
}

# Upstream names of operators that compute the same DCNv3 (CUDA extension or pure PyTorch).
_UPSTREAM_CORE_OPS = ("DCNv3", "DCNv3_pytorch")

# Widths of the attention-pooling head of the CLIP-distilled H and G models.
CLIP_POOL_DIM = 1024
CLIP_EMBED_DIM = 768
CLIP_NUM_HEADS = 16


class Stem(nn.Module):
    """Two stride-2 3x3 convs: ``[N, 3, H, W]`` -> ``[N, H/4, W/4, C]`` (channels-last out).

    Keys: ``conv1``, ``norm1.1`` (LN), ``conv2``, ``norm2.1`` (LN).
    """

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels // 2, 3, stride=2, padding=1)
        self.norm1 = layer_norm_nchw(channels // 2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1)
        self.norm2 = layer_norm_nchw_to_nhwc(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` -> ``[N, H/4, W/4, C]``."""
        x = self.act(self.norm1(self.conv1(x)))
        return self.norm2(self.conv2(x))


class Downsample(nn.Module):
    """Stride-2 3x3 conv (no bias) doubling the width, then LayerNorm; NHWC in and out."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1, bias=False)
        self.norm = layer_norm_nchw_to_nhwc(2 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, H, W, C]`` -> ``[N, ceil(H/2), ceil(W/2), 2C]``."""
        return self.norm(self.conv(x.permute(0, 3, 1, 2)))


class Block(nn.Module):
    """DCNv3 token mixer and MLP, each on a residual branch with stochastic depth.

    Normalisation placement (upstream semantics): with ``post_norm`` the norms act on the branch
    outputs; otherwise on the branch inputs, plus ``res_post_norm1/2`` on the outputs when
    ``res_post_norm`` is set and ``layer_scale`` is not. ``post_norm`` wins over
    ``res_post_norm``; with ``layer_scale`` the branches are scaled by ``gamma1``/``gamma2``.

    Args:
        channels: Width C.
        group: DCNv3 groups (the stage's entry of ``config.stage_groups``).
        config: Network settings (norm placement, layer scale, DCNv3 options and ablations, MLP
            ratio, dropout).
        drop_path: Stochastic-depth rate of this block.
    """

    def __init__(
        self, channels: int, group: int, config: InternImageConfig, drop_path: float
    ) -> None:
        super().__init__()
        self.post_norm = config.post_norm
        self.res_post_norm = config.res_post_norm
        self.layer_scale = config.layer_scale is not None
        self.norm1 = layer_norm_nhwc(channels)
        self.dcn: nn.Module
        if config.core_op == "DCNv4":
            # Imported here: InternImage needs only DCNv3.
            from internimage.layers.dcnv4 import DCNv4

            self.dcn = DCNv4(
                channels, group, kernel_size=3, dw_kernel_size=config.dw_kernel_size,
                offset_scale=config.offset_scale, output_bias=config.dcn_output_bias,
                remove_center=config.remove_center,
            )
        else:
            self.dcn = DCNv3(
                channels, group, kernel_size=3, dw_kernel_size=config.dw_kernel_size,
                offset_scale=config.offset_scale, center_feature_scale=config.center_feature_scale,
                remove_center=config.remove_center, weight_sharing=config.dcn_weights,
                mask_normalization=config.mask_normalization,
            )
        self.drop_path = DropPath(drop_path)
        self.norm2 = layer_norm_nhwc(channels)
        self.mlp = Mlp(channels, int(channels * config.mlp_ratio), drop=config.drop_rate,
                       fc2_bias=config.mlp_fc2_bias)
        if config.layer_scale is not None:
            self.gamma1 = nn.Parameter(torch.full((channels,), float(config.layer_scale)))
            self.gamma2 = nn.Parameter(torch.full((channels,), float(config.layer_scale)))
        if config.res_post_norm:
            self.res_post_norm1 = layer_norm_nhwc(channels)
            self.res_post_norm2 = layer_norm_nhwc(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, H, W, C]`` -> ``[N, H, W, C]``."""
        if self.layer_scale:
            if self.post_norm:
                x = x + self.drop_path(self.gamma1 * self.norm1(self.dcn(x)))
                return x + self.drop_path(self.gamma2 * self.norm2(self.mlp(x)))
            x = x + self.drop_path(self.gamma1 * self.dcn(self.norm1(x)))
            return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x)))
        if self.post_norm:
            x = x + self.drop_path(self.norm1(self.dcn(x)))
            return x + self.drop_path(self.norm2(self.mlp(x)))
        if self.res_post_norm:
            x = x + self.drop_path(self.res_post_norm1(self.dcn(self.norm1(x))))
            return x + self.drop_path(self.res_post_norm2(self.mlp(self.norm2(x))))
        x = x + self.drop_path(self.dcn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Stage(nn.Module):
    """Blocks of one resolution, optional interleaved post norms, stage norm and downsampling.

    Keys: ``blocks.b``, ``post_norms.j.0`` (stage 2 of H/G), ``norm.0`` (only when
    ``not post_norm or center_feature_scale``), ``downsample`` (stages 0-2).

    Args:
        channels: Width of the stage.
        depth: Number of blocks.
        group: DCNv3 groups.
        config: Network settings.
        drop_paths: Stochastic-depth rate of each block.
        post_norm_block_ids: Blocks followed by an extra LayerNorm (``None``: none).
        downsample: Whether the stage ends with a :class:`Downsample`.
    """

    def __init__(
        self,
        channels: int,
        depth: int,
        group: int,
        config: InternImageConfig,
        drop_paths: Sequence[float],
        post_norm_block_ids: Sequence[int] | None,
        downsample: bool,
    ) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.blocks = nn.ModuleList(
            Block(channels, group, config, drop_paths[b]) for b in range(depth)
        )
        self.norm = (
            layer_norm_nhwc(channels)
            if (not config.post_norm) or config.center_feature_scale
            else None
        )
        self.post_norm_block_ids = (
            tuple(post_norm_block_ids) if post_norm_block_ids is not None else None
        )
        if self.post_norm_block_ids is not None:
            self.post_norms = nn.ModuleList(
                layer_norm_nhwc(channels) for _ in self.post_norm_block_ids
            )
        self.downsample = Downsample(channels) if downsample else None

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Blocks, post norms and the stage norm: ``[N, H, W, C]`` -> the stage's output."""
        for b, block in enumerate(self.blocks):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if self.post_norm_block_ids is not None and b in self.post_norm_block_ids:
                x = self.post_norms[self.post_norm_block_ids.index(b)](x)
        if self.norm is not None:
            x = self.norm(x)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(stage output [N, H, W, C], input of the next stage)``."""
        out = self.forward_blocks(x)
        return out, (self.downsample(out) if self.downsample is not None else out)


def drop_path_rates(config: InternImageConfig) -> list[float]:
    """Stochastic-depth rate of every block, in network order."""
    total = sum(config.depths)
    if config.drop_path_type == "uniform":
        return [config.drop_path_rate] * total
    return [r.item() for r in torch.linspace(0, config.drop_path_rate, total, device="cpu")]


class _Backbone(nn.Module):
    """Stem and stages, with the backbone utilities shared by classifier and feature models."""

    config: InternImageConfig
    patch_embed: Stem
    levels: nn.ModuleList

    def _build_backbone(self, config: InternImageConfig) -> None:
        self.config = config
        self.patch_embed = Stem(3, config.channels)
        self.pos_drop = nn.Dropout(config.drop_rate)
        rates = drop_path_rates(config)
        levels = []
        start = 0
        # stage_groups: dcn_groups, when set, overrides the per-stage groups.
        for i, (depth, group) in enumerate(zip(config.depths, config.stage_groups, strict=True)):
            ids = config.level2_post_norm_block_ids if config.level2_post_norm and i == 2 else None
            levels.append(
                Stage(
                    config.stage_channels[i], depth, group, config, rates[start : start + depth],
                    ids, downsample=i < 3,
                )
            )
            start += depth
        self.levels = nn.ModuleList(levels)
        self._frozen_stages = -1

    @property
    def stage_feature_info(self) -> list[dict[str, Any]]:
        """Channels, stride and module name of each stage output."""
        return [
            {"num_chs": c, "reduction": 4 * 2**i, "module": f"levels.{i}"}
            for i, c in enumerate(self.config.stage_channels)
        ]

    def _stage_outputs(self, x: torch.Tensor, last: int) -> list[torch.Tensor]:
        """Stage outputs 0..last (NHWC): after the stage norm, before downsampling."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an image batch [N, 3, H, W], got shape {tuple(x.shape)}")
        x = self.pos_drop(self.patch_embed(x))
        outs = []
        for i in range(last + 1):
            level = self.levels[i]
            out = level.forward_blocks(x)
            outs.append(out)
            # Stages after the last requested one are skipped, so is the downsampling into them.
            if i < last and level.downsample is not None:
                x = level.downsample(out)
        return outs

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass to save memory."""
        for level in self.levels:
            level.grad_checkpointing = enable

    def _frozen_modules(self) -> Iterator[nn.Module]:
        if self._frozen_stages >= 0:
            yield self.patch_embed
        for i in range(max(0, self._frozen_stages)):
            yield self.levels[i]

    @property
    def frozen_stages(self) -> int:
        """Number of frozen stages after the stem (-1: nothing frozen; see freeze_stages)."""
        return self._frozen_stages

    @frozen_stages.setter
    def frozen_stages(self, num_stages: int) -> None:
        self.freeze_stages(num_stages)

    def freeze_stages(self, num_stages: int) -> None:
        """Freeze the stem and the first ``num_stages`` stages (their downsampling included).

        Frozen parts get ``requires_grad=False`` and stay in eval mode (no dropout or drop path)
        even after ``model.train()``. ``-1`` freezes nothing, ``0`` only the stem.

        Args:
            num_stages: From -1 to 4.
        """
        if not -1 <= num_stages <= 4:
            raise ValueError(f"frozen stages must be in -1..4, got {num_stages}")
        for module in self._frozen_modules():  # unfreeze what was frozen before
            module.requires_grad_(True)
        self._frozen_stages = num_stages
        for module in self._frozen_modules():
            module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> _Backbone:
        """Set training mode, keeping frozen stages in eval mode."""
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
        return self

    def _layer_id(self, name: str) -> int:
        """Depth index for layer-wise decay: stem 0, blocks 1..D, anything after D + 1."""
        depths = self.config.depths
        num_layers = sum(depths)
        parts = name.split(".")
        if parts[0] == "patch_embed":
            return 0
        if parts[0] == "levels":
            i = int(parts[1])
            start = sum(depths[:i])
            if parts[2] == "blocks":
                return start + int(parts[3]) + 1
            if parts[2] == "post_norms":
                return start + self.levels[i].post_norm_block_ids[int(parts[3])] + 1
            # Stage norm and downsampling follow the stage's last block.
            return start + depths[i]
        return num_layers + 1

    def param_groups(
        self, weight_decay: float, *, layer_decay: float | None = None
    ) -> list[dict[str, Any]]:
        """Optimizer parameter groups with weight-decay exemptions and layer-wise lr scales.

        1-D parameters (biases, norm weights, layer scales, attention biases) get no weight
        decay. With ``layer_decay`` the learning-rate factor of a parameter at depth index ``i``
        (stem 0, block b of the whole network b + 1, heads D + 1) is
        ``layer_decay ** (D + 1 - i)``. Frozen parameters are left out.

        Args:
            weight_decay: Decay of the other parameters.
            layer_decay: Layer-wise decay factor in (0, 1], or ``None`` for 1.0 everywhere.

        Returns:
            List of dicts with ``params``, ``weight_decay`` and ``lr_scale``.
        """
        if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
        top = sum(self.config.depths) + 1
        groups: dict[tuple[float, float], list[nn.Parameter]] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            decay = 0.0 if param.ndim <= 1 or name.endswith(".bias") else float(weight_decay)
            scale = 1.0 if layer_decay is None else layer_decay ** (top - self._layer_id(name))
            groups.setdefault((decay, scale), []).append(param)
        return [
            {"params": params, "weight_decay": decay, "lr_scale": scale}
            for (decay, scale), params in groups.items()
        ]


def _init_weights(module: nn.Module) -> None:
    # Upstream init: trunc-normal Linear weights, zero biases, unit LayerNorms.
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class InternImage(_Backbone):
    """InternImage classifier (and backbone) with the upstream module layout.

    Args:
        config: Architecture and training settings.
        num_classes: Classifier outputs; 0 gives an identity ``head`` (pooled features out).

    Example:
        >>> model = InternImage(VARIANTS["internimage_t"].config)
        >>> logits = model(torch.randn(1, 3, 224, 224))
    """

    def __init__(self, config: InternImageConfig, *, num_classes: int = 1000) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self._build_backbone(config)
        self.num_classes = num_classes
        last = config.stage_channels[3]
        if not config.use_clip_projector:
            hidden = int(last * config.cls_scale)
            self.conv_head = nn.Sequential(
                nn.Conv2d(last, hidden, 1, bias=False), batch_norm_nchw(hidden), nn.GELU()
            )
            self.num_features = hidden
        else:
            # Stage 3 is upsampled to stride 16 by a pixel shuffle and added to stage 2.
            self.dcnv3_head_x4 = nn.Sequential(
                nn.Conv2d(last, CLIP_POOL_DIM * 4, 1), nn.PixelShuffle(2)
            )
            self.dcnv3_head_x3 = nn.Conv2d(last // 2, CLIP_POOL_DIM, 1)
            self.clip_projector = AttentionPooling(CLIP_POOL_DIM, CLIP_NUM_HEADS, CLIP_EMBED_DIM)
            self.fc_norm = layer_norm_nhwc(CLIP_EMBED_DIM)
            self.num_features = CLIP_EMBED_DIM
        self.head: nn.Module = self._new_head(num_classes)
        self.feature_info = self.stage_feature_info
        self.apply(_init_weights)
        for module in self.modules():
            if isinstance(module, Block):
                module.dcn.reset_parameters()

    def _new_head(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @classmethod
    def from_upstream_config(
        cls,
        cfg: Mapping[str, Any],
        *,
        dcn_weights: str = "shared",
        dcn_groups: int | None = None,
        mask_normalization: str = "softmax",
    ) -> InternImage:
        """Build from upstream ``InternImage(...)`` constructor arguments.

        Absent keys take the upstream defaults (:data:`UPSTREAM_DEFAULTS`); ``with_cp`` turns on
        gradient checkpointing. Only the operators, activation and norm of the release are
        supported (``core_op`` DCNv3/DCNv3_pytorch, ``act_layer`` GELU, ``norm_layer`` LN).

        Args:
            cfg: The upstream constructor arguments.
            dcn_weights: Ablation option of :class:`InternImageConfig` (not an upstream
                argument; the default is upstream's network).
            dcn_groups: Same.
            mask_normalization: Same.

        Raises:
            ValueError: An unknown key (e.g. a non-constructor entry such as ``input_shape``) or an
                unsupported value.
        """
        unknown = sorted(set(cfg) - set(UPSTREAM_DEFAULTS))
        if unknown:
            raise ValueError(
                f"unknown upstream InternImage argument(s) {', '.join(map(repr, unknown))}; "
                f"valid: {', '.join(UPSTREAM_DEFAULTS)}"
            )
        args = {**UPSTREAM_DEFAULTS, **cfg}
        for key, allowed in (
            ("core_op", _UPSTREAM_CORE_OPS), ("act_layer", ("GELU",)), ("norm_layer", ("LN",))
        ):
            if args[key] not in allowed:
                raise ValueError(f"unsupported {key}={args[key]!r}; supported: {allowed}")
        num_classes = int(args.pop("num_classes"))
        with_cp = bool(args.pop("with_cp"))
        for key in ("core_op", "act_layer", "norm_layer"):
            args.pop(key)
        config = InternImageConfig(
            **args, dcn_weights=dcn_weights, dcn_groups=dcn_groups,
            mask_normalization=mask_normalization,
        )
        model = cls(config, num_classes=num_classes)
        if with_cp:
            model.set_grad_checkpointing(True)
        return model

    def forward_intermediates(
        self, x: torch.Tensor, indices: Sequence[int] | None = None
    ) -> list[torch.Tensor]:
        """Stage outputs as NCHW maps (C, 2C, 4C, 8C channels at strides 4, 8, 16, 32).

        Args:
            x: ``[N, 3, H, W]`` images.
            indices: Stages to return (default all four); later stages are not computed.
        """
        wanted = _check_indices(indices)
        outs = self._stage_outputs(x, max(wanted))
        return [outs[i].permute(0, 3, 1, 2) for i in wanted]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features before the head.

        Returns:
            Conv-head models: the last stage map ``[N, 8C, H/32, W/32]``. Attention-pooling
            models (H, G): the fused stride-16 tokens ``[N, H/16 * W/16, 1024]``.
        """
        if not self.config.use_clip_projector:
            return self._stage_outputs(x, 3)[3].permute(0, 3, 1, 2)
        if x.dim() == 4 and (x.shape[-2] % 32 or x.shape[-1] % 32):
            raise ValueError(
                f"the attention-pooling head needs image sides that are multiples of 32 (stage 3 "
                f"is upsampled 2x onto stage 2), got {tuple(x.shape[-2:])}"
            )
        x3, x4 = self._stage_outputs(x, 3)[2:]
        fused = self.dcnv3_head_x4(x4.permute(0, 3, 1, 2)) + self.dcnv3_head_x3(
            x3.permute(0, 3, 1, 2)
        )  # [N, 1024, H/16, W/16]
        return fused.flatten(2).transpose(1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Head on :meth:`forward_features` output.

        Args:
            x: Output of :meth:`forward_features`.
            pre_logits: Return the pooled features that enter ``head`` (``num_features`` wide).
        """
        if not self.config.use_clip_projector:
            # The 1x1 conv head runs on the full map; pooling comes after it.
            x = F.adaptive_avg_pool2d(self.conv_head(x), 1).flatten(1)
        else:
            x = self.fc_norm(self.clip_projector(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` images -> ``[N, num_classes]`` logits."""
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``head`` by a freshly initialised one with ``num_classes`` outputs."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        reference = self.patch_embed.conv1.weight
        head = self._new_head(num_classes).to(device=reference.device, dtype=reference.dtype)
        head.apply(_init_weights)
        self.head = head

    def get_classifier(self) -> nn.Module:
        """The final linear layer."""
        return self.head


def _check_indices(indices: Sequence[int] | None) -> list[int]:
    wanted = [0, 1, 2, 3] if indices is None else [int(i) for i in indices]
    if not wanted or any(not 0 <= i <= 3 for i in wanted):
        raise ValueError(f"stage indices must be in 0..3 (and not empty), got {indices}")
    return wanted


class InternImageFeatures(_Backbone):
    """Feature extractor: returns the selected stage outputs as NCHW maps.

    It keeps the stem and stage modules of an :class:`InternImage` (same key names, no head), so
    dense-prediction backbone checkpoints load after stripping their ``backbone.`` prefix.

    Args:
        model: Classifier whose stem and stages are taken over.
        out_indices: Stages to return, in this order.
    """

    def __init__(self, model: InternImage, out_indices: Sequence[int] = (0, 1, 2, 3)) -> None:
        super().__init__()
        self.out_indices = tuple(_check_indices(out_indices))
        self.config = model.config
        self.patch_embed = model.patch_embed
        self.pos_drop = model.pos_drop
        self.levels = model.levels
        self._frozen_stages = model.frozen_stages
        self.feature_info = [self.stage_feature_info[i] for i in self.out_indices]
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[N, 3, H, W]`` -> list of ``[N, C_i, H/s_i, W/s_i]`` for i in ``out_indices``."""
        outs = self._stage_outputs(x, max(self.out_indices))
        return [outs[i].permute(0, 3, 1, 2) for i in self.out_indices]

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Same as :meth:`forward`."""
        return self.forward(x)
