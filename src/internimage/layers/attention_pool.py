"""Attention pooling head of the CLIP-distilled InternImage-H and -G classifiers."""

from __future__ import annotations

import torch
from torch import nn

from internimage.layers.norm import layer_norm_nhwc

__all__ = ["AttentionPooling", "CrossAttention"]


class CrossAttention(nn.Module):
    """Multi-head attention of queries over separate key and value tokens.

    The q/k/v projections have no bias of their own; their biases are the separate parameters
    ``q_bias``, ``k_bias`` and ``v_bias`` (the upstream key layout).

    Args:
        dim: Token width (also the attention width).
        num_heads: Number of heads; ``dim`` must be divisible by it.
        out_dim: Width after the output projection ``proj``.
    """

    def __init__(self, dim: int, num_heads: int, out_dim: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(
                f"CrossAttention: dim={dim} must be divisible by num_heads={num_heads}"
            )
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.k_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, out_dim)

    def _heads(self, x: torch.Tensor, linear: nn.Linear, bias: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        x = nn.functional.linear(x, linear.weight, bias)
        return x.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # [B, h, N, d]

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``[B, Nq, dim]``, ``[B, Nk, dim]``, ``[B, Nk, dim]`` -> ``[B, Nq, out_dim]``."""
        b, nq, _ = query.shape
        q = self._heads(query, self.q, self.q_bias) * self.scale
        k = self._heads(key, self.k, self.k_bias)
        v = self._heads(value, self.v, self.v_bias)
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)  # [B, h, Nq, Nk]
        x = (attn @ v).transpose(1, 2).reshape(b, nq, -1)
        return self.proj(x)


class AttentionPooling(nn.Module):
    """Pool tokens into one vector: the mean token attends over all tokens.

    Keys: ``norm1_q.0``, ``norm1_k.0``, ``norm1_v.0`` (LayerNorms) and ``cross_dcn``
    (:class:`CrossAttention`).

    Args:
        dim: Token width.
        num_heads: Attention heads.
        out_dim: Output width.
    """

    def __init__(self, dim: int, num_heads: int, out_dim: int) -> None:
        super().__init__()
        self.norm1_q = layer_norm_nhwc(dim)
        self.norm1_k = layer_norm_nhwc(dim)
        self.norm1_v = layer_norm_nhwc(dim)
        self.cross_dcn = CrossAttention(dim, num_heads, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, L, dim]`` -> ``[B, out_dim]``."""
        query = self.norm1_q(tokens.mean(dim=1, keepdim=True))  # [B, 1, dim]
        key = self.norm1_k(tokens)
        value = self.norm1_v(tokens)
        return self.cross_dcn(query, key, value).squeeze(1)
