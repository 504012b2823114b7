"""InternImage in Hugging Face transformers: a config, a backbone and an image classifier.

Importing this module registers them with transformers' auto classes (``model_type``
``"internimage"``), so that ``AutoBackbone``, ``AutoModelForImageClassification`` and every
transformers model that takes a backbone through its config (``UperNetForSemanticSegmentation``,
``Mask2FormerForUniversalSegmentation``, ...) build InternImage from an
:class:`InternImageHFConfig`. The networks are this library's own modules
(:class:`~internimage.models.internimage.InternImage`), wrapped; nothing is implemented twice.

The config's fields are the upstream ``InternImage`` constructor arguments, as upstream's own
Hugging Face repositories store them in ``config.json`` (``model_type: "internimage"``), and the
classifier's weights are named as upstream names them there (``model.`` prefix, layer scale as
``layer_scale1``/``layer_scale2``), so those repositories load with
``InternImageHFForImageClassification.from_pretrained`` and no remote code.

Three more fields are this library's ablation options (``dcn_weights``, ``dcn_groups``,
``mask_normalization``, see :class:`~internimage.models.config.InternImageConfig`). They have no
upstream argument; at their defaults (the paper's DCNv3) they are left out of ``config.json``, so
such configs save exactly as before and upstream's files, which lack them, load as DCNv3.

Needs the ``seg`` extra (``pip install internimage[seg]``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as hf_init
from transformers.backbone_utils import BackboneConfigMixin, BackboneMixin
from transformers.modeling_outputs import BackboneOutput, ImageClassifierOutputWithNoAttention

from internimage.layers.dcnv3 import DCNv3, PointProjection
from internimage.layers.dcnv4 import DCNv4
from internimage.models.config import (
    DCN_WEIGHTS,
    MASK_NORMALIZATIONS,
    VARIANTS,
    check_ablation_options,
)
from internimage.models.flash_internimage import FlashInternImage
from internimage.models.internimage import (
    FLASH_UPSTREAM_DEFAULTS,
    UPSTREAM_DEFAULTS,
    Block,
    InternImage,
    InternImageFeatures,
    upstream_arguments,
)

__all__ = [
    "ABLATION_DEFAULTS",
    "STAGE_NAMES",
    "InternImageHFBackbone",
    "InternImageHFConfig",
    "InternImageHFForImageClassification",
    "InternImageHFPreTrainedModel",
]

# FlashInternImage's arguments that InternImage lacks; None (the family's default) is not saved.
_FLASH_FIELDS: dict[str, Any] = {"dcn_output_bias": None, "mlp_fc2_bias": None}

#: Names of the four stages (strides 4, 8, 16, 32) in ``out_features``.
STAGE_NAMES = ("stage1", "stage2", "stage3", "stage4")
#: The config's ablation fields and their defaults (the paper's DCNv3); not upstream arguments.
ABLATION_DEFAULTS: dict[str, Any] = {
    "dcn_weights": DCN_WEIGHTS[0],
    "dcn_groups": None,
    "mask_normalization": MASK_NORMALIZATIONS[0],
}


@strict
class InternImageHFConfig(BackboneConfigMixin, PreTrainedConfig):
    """Settings of an InternImage network in transformers.

    The fields are the upstream ``InternImage`` constructor arguments (their defaults here are
    InternImage-T's); :meth:`from_variant` fills them from a registered variant. As a backbone
    the model returns the stages in ``out_features``/``out_indices`` (default: all four, which
    UperNet needs).

    Three fields are ablations of DCNv3 with no upstream argument (see
    :class:`~internimage.models.config.InternImageConfig`): ``dcn_weights`` (``"shared"`` or
    ``"unshared"``), ``dcn_groups`` (one group count for every stage, overriding ``groups``;
    ``None``: ``groups``) and ``mask_normalization`` (``"softmax"`` or ``"sigmoid"``). They are
    serialised only when set away from those defaults.

    ``core_op="DCNv4"`` makes it a FlashInternImage (upstream OpenGVLab/DCNv4) with its two
    extra arguments ``dcn_output_bias`` and ``mlp_fc2_bias`` (``None``: the family's default,
    off for FlashInternImage; InternImage's DCNv3 blocks always have both biases and its configs
    are written without these fields).
    """

    model_type = "internimage"

    core_op: str = "DCNv3"
    channels: int = 64
    depths: list[int] | tuple[int, ...] = (4, 4, 18, 4)
    groups: list[int] | tuple[int, ...] = (4, 8, 16, 32)
    num_classes: int = 1000
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    drop_path_type: str = "linear"
    act_layer: str = "GELU"
    norm_layer: str = "LN"
    layer_scale: float | None = None
    offset_scale: float = 1.0
    post_norm: bool = False
    cls_scale: float = 1.5
    with_cp: bool = False
    dw_kernel_size: int | None = None
    use_clip_projector: bool = False
    level2_post_norm: bool = False
    level2_post_norm_block_ids: list[int] | tuple[int, ...] | None = None
    res_post_norm: bool = False
    center_feature_scale: bool = False
    remove_center: bool = False
    dcn_weights: str = "shared"
    dcn_groups: int | None = None
    mask_normalization: str = "softmax"
    dcn_output_bias: bool | None = None
    mlp_fc2_bias: bool | None = None
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        self.stage_names = list(STAGE_NAMES)
        out_features = kwargs.pop("out_features", None)
        out_indices = kwargs.pop("out_indices", None)
        if out_features is None and out_indices is None:
            out_features, out_indices = self._out_features, self._out_indices
        if out_features is None and out_indices is None:
            # Dense heads read several stages (UperNet all four), unlike transformers' default of
            # the last one.
            out_indices = list(range(len(STAGE_NAMES)))
        self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)
        # The enumerations early, with the valid values; whether dcn_groups divides every
        # stage's width is checked where the network is built (InternImageConfig).
        check_ablation_options(self.dcn_weights, self.mask_normalization, self.dcn_groups)
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The config as a dict, without the ablation fields that are at their defaults.

        Every saved form (``config.json``, nested in a UperNet or Mask2Former config, the diff
        that ``save_pretrained`` writes) goes through here, so a DCNv3 config is written as it
        was before these fields existed, and as upstream's repositories have it.
        """
        output = super().to_dict()
        for name, default in {**ABLATION_DEFAULTS, **_FLASH_FIELDS}.items():
            if output.get(name, default) == default:
                output.pop(name, None)
        return output

    @classmethod
    def from_variant(cls, name: str, **fields: Any) -> InternImageHFConfig:
        """The config of a registered variant (e.g. ``"internimage_t"``), with ``fields`` on top.

        Raises:
            ValueError: Unknown variant name.
        """
        if name not in VARIANTS:
            raise ValueError(f"unknown model {name!r}; available: {', '.join(VARIANTS)}")
        return cls(**{**upstream_arguments(VARIANTS[name].config), **fields})

    def ablation_options(self) -> dict[str, Any]:
        """The ablation fields (``dcn_weights``, ``dcn_groups``, ``mask_normalization``)."""
        return {name: getattr(self, name) for name in ABLATION_DEFAULTS}

    def upstream_arguments(self) -> dict[str, Any]:
        """The upstream ``InternImage`` constructor arguments of this config.

        ``dcn_groups`` becomes ``groups``, as upstream builds that network; the other two
        ablation options have no upstream equivalent.

        Raises:
            ValueError: ``dcn_weights="unshared"`` or ``mask_normalization="sigmoid"``.
        """
        for name in ("dcn_weights", "mask_normalization"):
            if getattr(self, name) != ABLATION_DEFAULTS[name]:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is an ablation with no upstream InternImage "
                    f"argument; only {name}={ABLATION_DEFAULTS[name]!r} converts"
                )
        args = self._upstream_fields()
        if self.dcn_groups is not None:
            args["groups"] = (int(self.dcn_groups),) * len(args["groups"])
        return args

    def _upstream_fields(self) -> dict[str, Any]:
        """The fields named like upstream constructor arguments, as they are (sequences as
        tuples), without the ablation options."""
        if self.core_op == "DCNv4":
            args = {name: getattr(self, name) for name in FLASH_UPSTREAM_DEFAULTS}
            for name in _FLASH_FIELDS:
                if args[name] is None:
                    args[name] = FLASH_UPSTREAM_DEFAULTS[name]
        else:
            args = {name: getattr(self, name) for name in UPSTREAM_DEFAULTS}
        for name in ("depths", "groups", "level2_post_norm_block_ids"):
            if args[name] is not None:
                args[name] = tuple(int(v) for v in args[name])
        return args

    def build_network(self, num_classes: int | None = None) -> InternImage:
        """This library's InternImage with this config's architecture and ablation options.

        Args:
            num_classes: Classifier outputs (0: none, the backbone); default ``num_classes``.
        """
        args = self._upstream_fields()
        if num_classes is not None:
            args["num_classes"] = num_classes
        if self.core_op == "DCNv4":
            self.upstream_arguments()  # refuses the DCNv3 ablations, naming them
            return FlashInternImage.from_upstream_config(args)
        return InternImage.from_upstream_config(args, **self.ablation_options())


class InternImageHFPreTrainedModel(PreTrainedModel):
    """Common base: weight initialisation as this library's constructors do it."""

    config: InternImageHFConfig
    config_class = InternImageHFConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["Block"]

    def _dcnv3_linear_roles(self) -> dict[int, str]:
        """``id(linear) -> role`` for the linear layers inside DCNv3 and DCNv4 modules."""
        roles: dict[int, str] | None = self.__dict__.get("_dcnv3_roles")
        if roles is None:
            roles = {}
            for module in self.modules():
                if isinstance(module, DCNv3):
                    for role in ("offset", "mask", "input_proj", "output_proj"):
                        roles[id(getattr(module, role))] = role
                elif isinstance(module, DCNv4):
                    # The packed offsets and point weights start at zero, like DCNv3's.
                    for role, name in (("offset", "offset_mask"), ("input_proj", "value_proj"),
                                       ("output_proj", "output_proj")):
                        roles[id(getattr(module, name))] = role
            self.__dict__["_dcnv3_roles"] = roles
        return roles

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The initialisation of InternImage's constructor, one module at a time, through
        # transformers' init functions, which leave weights loaded from a checkpoint alone (and
        # each tensor is initialised once, so DCNv3's layers are decided at the layer itself).
        if isinstance(module, nn.Linear):
            role = self._dcnv3_linear_roles().get(id(module))
            if role in ("offset", "mask"):
                # Zero offsets and uniform point weights at the start.
                hf_init.zeros_(module.weight)
            elif role is not None:
                hf_init.xavier_uniform_(module.weight)
            else:
                hf_init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                hf_init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm | nn.BatchNorm2d):
            hf_init.ones_(module.weight)
            hf_init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            # PyTorch's default initialisation of a convolution.
            hf_init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight.shape[1] * module.weight[0, 0].numel()
                bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
                hf_init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, PointProjection):
            # The unshared ablation's per-point output projections: each point's matrix as a
            # C_in -> C_out xavier-uniform linear (PointProjection.reset_parameters), zero bias.
            bound = math.sqrt(6.0 / (module.in_features + module.out_features))
            hf_init.uniform_(module.weight, -bound, bound)
            hf_init.zeros_(module.bias)
        elif isinstance(module, DCNv3) and module.center_feature_scale:
            hf_init.zeros_(module.center_feature_scale_proj_weight)
            hf_init.zeros_(module.center_feature_scale_proj_bias)
        elif isinstance(module, Block) and module.layer_scale:
            value = float(self.config.layer_scale)
            hf_init.constant_(module.gamma1, value)
            hf_init.constant_(module.gamma2, value)


class InternImageHFBackbone(BackboneMixin, InternImageHFPreTrainedModel):
    """InternImage as a transformers backbone: the stage maps named in ``out_features``.

    ``forward(pixel_values [N, 3, H, W])`` returns a ``BackboneOutput`` whose ``feature_maps``
    are NCHW maps at strides 4, 8, 16, 32 (``C, 2C, 4C, 8C`` channels), after each stage's norm.
    """

    has_attentions = False

    def __init__(self, config: InternImageHFConfig) -> None:
        super().__init__(config)
        classifier = config.build_network(num_classes=0)
        self.model = InternImageFeatures(classifier, out_indices=tuple(config.out_indices))
        self.num_features = [config.channels * 2**i for i in range(len(STAGE_NAMES))]
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BackboneOutput:
        """``[N, 3, H, W]`` images -> the maps of ``out_features`` (no hidden states beyond them,
        no attentions: there are none)."""
        maps = tuple(self.model(pixel_values))
        return BackboneOutput(
            feature_maps=maps, hidden_states=maps if output_hidden_states else None
        )


class InternImageHFForImageClassification(InternImageHFPreTrainedModel):
    """InternImage classifier for transformers (``num_classes`` outputs).

    Its weights are the classifier's under a ``model.`` prefix, as in upstream's Hugging Face
    repositories.
    """

    def __init__(self, config: InternImageHFConfig) -> None:
        super().__init__(config)
        self.model = config.build_network()
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> ImageClassifierOutputWithNoAttention:
        """``[N, 3, H, W]`` images -> logits ``[N, num_classes]`` (and the cross-entropy loss when
        ``labels [N]`` are given)."""
        logits = self.model(pixel_values)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits)


def _register() -> None:
    from transformers.conversion_mapping import register_checkpoint_conversion_mapping
    from transformers.core_model_loading import WeightRenaming

    AutoConfig.register(InternImageHFConfig.model_type, InternImageHFConfig, exist_ok=True)
    AutoBackbone.register(InternImageHFConfig, InternImageHFBackbone, exist_ok=True)
    AutoModelForImageClassification.register(
        InternImageHFConfig, InternImageHFForImageClassification, exist_ok=True
    )
    AutoModel.register(InternImageHFConfig, InternImageHFForImageClassification, exist_ok=True)
    # Upstream's repositories name the layer scale layer_scale1/2 where the modules say
    # gamma1/2; saving reverses the renaming, so saved files keep upstream's names.
    register_checkpoint_conversion_mapping(
        InternImageHFConfig.model_type,
        [WeightRenaming("layer_scale1", "gamma1"),
         WeightRenaming("layer_scale2", "gamma2")],
        overwrite=True,
    )
    # Mask2Former's config warns about any backbone but Swin; InternImage is one it runs
    # (upstream's Mask2Former models map onto it key for key).
    from transformers import Mask2FormerConfig

    if InternImageHFConfig.model_type not in Mask2FormerConfig.backbones_supported:
        Mask2FormerConfig.backbones_supported = [*Mask2FormerConfig.backbones_supported,
                                                 InternImageHFConfig.model_type]


_register()
