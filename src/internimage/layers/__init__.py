"""Reusable building blocks of InternImage: DCNv3 module, MLP, drop path, norms, attention pool."""

from internimage.layers.attention_pool import AttentionPooling, CrossAttention
from internimage.layers.dcnv3 import DCNv3
from internimage.layers.drop_path import DropPath
from internimage.layers.mlp import Mlp
from internimage.layers.norm import (
    LAYER_NORM_EPS,
    ToChannelsFirst,
    ToChannelsLast,
    batch_norm_nchw,
    layer_norm_nchw,
    layer_norm_nchw_to_nhwc,
    layer_norm_nhwc,
)

__all__ = [
    "LAYER_NORM_EPS",
    "AttentionPooling",
    "CrossAttention",
    "DCNv3",
    "DropPath",
    "Mlp",
    "ToChannelsFirst",
    "ToChannelsLast",
    "batch_norm_nchw",
    "layer_norm_nchw",
    "layer_norm_nchw_to_nhwc",
    "layer_norm_nhwc",
]
