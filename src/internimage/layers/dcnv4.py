"""The DCNv4 module of FlashInternImage: value and packed offset/weight projections around the
DCNv4 operator."""

from __future__ import annotations

import torch
from torch import nn

from internimage.ops import dcnv4
from internimage.ops.geometry import DCNv3Geometry, dcnv4_columns

__all__ = ["DCNv4"]


class DCNv4(nn.Module):
    """DCNv4 deformable sampling with its projections (upstream's ``DCNv4`` module).

    ``value_proj`` maps the input to the values that are sampled; ``offset_mask`` predicts, from
    the input (through the depthwise conv ``offset_mask_dw`` when ``dw_kernel_size`` is set, with
    no norm or activation), every group's K offset pairs and K point weights packed in one
    tensor of :func:`~internimage.ops.geometry.dcnv4_columns` columns; the weights are used as
    given (no softmax). The sampled values pass through ``output_proj``.

    Args:
        channels: Width C.
        group: Number of groups G (C must be divisible by G).
        kernel_size: Side k of the sampling kernel.
        dw_kernel_size: Depthwise conv before ``offset_mask`` (``None``: none).
        offset_scale: Scale of the base grid and the learned offsets.
        output_bias: Whether ``output_proj`` has a bias.
        remove_center: Drop the kernel's centre point.
    """

    def __init__(
        self,
        channels: int,
        group: int,
        *,
        kernel_size: int = 3,
        dw_kernel_size: int | None = None,
        offset_scale: float = 1.0,
        output_bias: bool = False,
        remove_center: bool = False,
    ) -> None:
        super().__init__()
        if channels % group != 0:
            raise ValueError(f"DCNv4: channels={channels} must be divisible by group={group}")
        if kernel_size < 1 or kernel_size % 2 != 1:
            raise ValueError(f"DCNv4: kernel_size must be odd and positive, got {kernel_size}")
        if dw_kernel_size is not None and (dw_kernel_size < 1 or dw_kernel_size % 2 != 1):
            raise ValueError(f"DCNv4: dw_kernel_size must be odd and positive, got "
                             f"{dw_kernel_size}")
        self.channels = channels
        self.group = group
        self.kernel_size = kernel_size
        self.dw_kernel_size = dw_kernel_size
        self.offset_scale = float(offset_scale)
        self.remove_center = remove_center
        self.points = kernel_size * kernel_size - int(remove_center)
        # The operator's sampling geometry (stride 1, "same" padding), as DCNv3 keeps it; read
        # by the sampling-location maps.
        self.geometry = DCNv3Geometry(kernel_size, 1, (kernel_size - 1) // 2, 1, group,
                                      self.offset_scale, remove_center)
        # The point weights are used as the projection gives them.
        self.mask_normalization = "none"
        self.value_proj = nn.Linear(channels, channels)
        if dw_kernel_size is not None:
            self.offset_mask_dw = nn.Conv2d(channels, channels, dw_kernel_size,
                                            padding=(dw_kernel_size - 1) // 2, groups=channels)
        self.offset_mask = nn.Linear(channels, dcnv4_columns(group, self.points))
        self.output_proj = nn.Linear(channels, channels, bias=output_bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero offsets and weights at start; xavier-uniform projections (upstream's init)."""
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)
        for linear in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(linear.weight)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        """``[N, H, W, C]`` -> ``[N, H, W, C]``."""
        x = self.value_proj(inp)
        source = inp
        if self.dw_kernel_size is not None:
            source = self.offset_mask_dw(inp.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        offset_mask = self.offset_mask(source)  # [N, H, W, P]
        if x.is_meta:
            # Meta tensors carry shapes only (model construction, MAC counting): the sampling
            # keeps the spatial size (stride 1, "same" padding), so skip it.
            x = torch.empty_like(x)
        else:
            x = dcnv4(
                x, offset_mask, kernel_size=self.kernel_size, stride=1,
                pad=(self.kernel_size - 1) // 2, dilation=1, group=self.group,
                group_channels=self.channels // self.group, offset_scale=self.offset_scale,
                remove_center=self.remove_center,
            )
        return self.output_proj(x)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, group={self.group}, kernel_size={self.kernel_size}, "
            f"dw_kernel_size={self.dw_kernel_size}, offset_scale={self.offset_scale}, "
            f"remove_center={self.remove_center}"
        )
