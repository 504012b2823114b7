"""InternImage networks: configuration, variants, model, checkpoints, pretrained weights, MACs."""

from internimage.models.checkpoint import (
    CheckpointMismatchError,
    LoadResult,
    extract_state_dict,
    load_checkpoint,
    read_checkpoint,
)
from internimage.models.config import (
    VARIANTS,
    InternImageConfig,
    VariantInfo,
    scaled_config,
    stacking_config,
)
from internimage.models.factory import create_model, list_models
from internimage.models.flash_internimage import FlashInternImage
from internimage.models.internimage import (
    Block,
    Downsample,
    InternImage,
    InternImageFeatures,
    Stage,
    Stem,
)
from internimage.models.macs import count_macs
from internimage.models.pretrained import PRETRAINED, PretrainedWeights, resolve_pretrained

__all__ = [
    "PRETRAINED",
    "VARIANTS",
    "Block",
    "CheckpointMismatchError",
    "Downsample",
    "FlashInternImage",
    "InternImage",
    "InternImageConfig",
    "InternImageFeatures",
    "LoadResult",
    "PretrainedWeights",
    "Stage",
    "Stem",
    "VariantInfo",
    "count_macs",
    "create_model",
    "extract_state_dict",
    "list_models",
    "load_checkpoint",
    "read_checkpoint",
    "resolve_pretrained",
    "scaled_config",
    "stacking_config",
]
