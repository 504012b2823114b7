"""Registration of the DCNv3 and DCNv4 kernels as torch operators, ``torch.ops.internimage.dcnv3``
and ``torch.ops.internimage.dcnv4``.

Each operator has a CPU implementation (numba kernels), a CUDA implementation (Triton kernels), a
fake implementation for tracing, and an autograd formula that calls the registered backward
operator. The ``backend`` argument names the kernel family so that a forced choice survives
tracing by ``torch.compile`` as a constant.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from internimage.ops.geometry import (
    DCNv3Geometry,
    dcnv4_geometry,
    validate_dcnv4_inputs,
    validate_inputs,
)

__all__ = ["dcnv3_backward_op", "dcnv3_op", "dcnv4_backward_op", "dcnv4_op"]


def _geometry(
    kernel_size: int, stride: int, pad: int, dilation: int, group: int, offset_scale: float,
    remove_center: bool,
) -> DCNv3Geometry:
    return DCNv3Geometry(kernel_size, stride, pad, dilation, group, offset_scale, remove_center)


def _kernels(backend: str) -> Any:
    # Imported on first use so that CPU-only installs never import Triton, and importing the
    # package does not compile anything.
    if backend == "numba":
        from internimage.ops import cpu_kernels

        return cpu_kernels
    if backend == "triton":
        from internimage.ops import triton_kernels

        return triton_kernels
    raise RuntimeError(f"dcnv3: backend {backend!r} has no registered kernels")


def _alert_not_deterministic(op: str = "dcnv3") -> None:
    """Honour torch.use_deterministic_algorithms() as PyTorch's own ops do.

    The GPU backward adds into grad_input with atomics, so its last bits may vary between runs.

    Args:
        op: The operator whose backward is about to run (``dcnv3`` or ``dcnv4``).
    """
    if not torch.are_deterministic_algorithms_enabled():
        return
    message = (
        f"internimage::{op}_backward with the triton backend adds into grad_input with atomics "
        f"and is not deterministic"
    )
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(message, stacklevel=3)
        return
    raise RuntimeError(
        f"{message}; torch.use_deterministic_algorithms(True) is set: use "
        f"internimage.ops.use_backend('reference') (deterministic on every device) or "
        f"warn_only=True"
    )


@torch.library.custom_op("internimage::dcnv3", mutates_args=(), device_types=("cpu", "cuda"))
def dcnv3_op(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    kernel_size: int,
    stride: int,
    pad: int,
    dilation: int,
    group: int,
    offset_scale: float,
    remove_center: bool,
    backend: str,
) -> torch.Tensor:
    """Forward kernel: ``[N, H, W, G*D]`` sampled into ``[N, Ho, Wo, G*D]``."""
    geometry = _geometry(kernel_size, stride, pad, dilation, group, offset_scale, remove_center)
    # The op is public as torch.ops.internimage.dcnv3, so the kernels never trust their caller.
    validate_inputs(input, offset, mask, geometry)
    return _kernels(backend).forward(
        input.contiguous(), offset.contiguous(), mask.contiguous(), geometry
    )


@dcnv3_op.register_fake
def _dcnv3_fake(
    input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, kernel_size: int, stride: int,
    pad: int, dilation: int, group: int, offset_scale: float, remove_center: bool, backend: str,
) -> torch.Tensor:
    return input.new_empty(offset.shape[0], offset.shape[1], offset.shape[2], input.shape[3])


@torch.library.custom_op(
    "internimage::dcnv3_backward", mutates_args=(), device_types=("cpu", "cuda")
)
def dcnv3_backward_op(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    kernel_size: int,
    stride: int,
    pad: int,
    dilation: int,
    group: int,
    offset_scale: float,
    remove_center: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward kernel: gradients for input, offset and mask."""
    geometry = _geometry(kernel_size, stride, pad, dilation, group, offset_scale, remove_center)
    validate_inputs(input, offset, mask, geometry)
    if grad_output.shape != (*offset.shape[:3], input.shape[3]):
        raise ValueError(
            f"dcnv3_backward: grad_output shape {tuple(grad_output.shape)} does not match the "
            f"output shape {(*offset.shape[:3], input.shape[3])}"
        )
    if backend == "triton":
        _alert_not_deterministic()
    return _kernels(backend).backward(
        grad_output.contiguous(), input.contiguous(), offset.contiguous(), mask.contiguous(),
        geometry,
    )


@dcnv3_backward_op.register_fake
def _dcnv3_backward_fake(
    grad_output: torch.Tensor, input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor,
    kernel_size: int, stride: int, pad: int, dilation: int, group: int, offset_scale: float,
    remove_center: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.empty_like(input), torch.empty_like(offset), torch.empty_like(mask)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    input, offset, mask, *scalars = inputs
    ctx.save_for_backward(input, offset, mask)
    ctx.scalars = scalars


def _backward(
    ctx: Any, grad_output: torch.Tensor
) -> tuple[torch.Tensor | None, ...]:
    input, offset, mask = ctx.saved_tensors
    grad_input, grad_offset, grad_mask = dcnv3_backward_op(
        grad_output, input, offset, mask, *ctx.scalars
    )
    return (grad_input, grad_offset, grad_mask) + (None,) * len(ctx.scalars)


dcnv3_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------- DCNv4
# DCNv4 samples as DCNv3 does; only its offsets and weights come packed in one tensor (see
# internimage.ops.packing). The same kernels compute it: the Triton ones read that tensor in
# place and write its gradient in the same layout; the numba backend unpacks it (see
# cpu_kernels' module docstring for why).


@torch.library.custom_op("internimage::dcnv4", mutates_args=(), device_types=("cpu", "cuda"))
def dcnv4_op(
    input: torch.Tensor,
    offset_mask: torch.Tensor,
    kernel_size: int,
    stride: int,
    pad: int,
    dilation: int,
    group: int,
    group_channels: int,
    offset_scale: float,
    remove_center: bool,
    backend: str,
) -> torch.Tensor:
    """Forward kernel: ``[N, H, W, G*D]`` sampled into ``[N, Ho, Wo, G*D]``."""
    geometry = dcnv4_geometry(kernel_size, stride, pad, dilation, group, offset_scale,
                              remove_center)
    validate_dcnv4_inputs(input, offset_mask, geometry, group_channels)
    return _kernels(backend).forward_dcnv4(input.contiguous(), offset_mask.contiguous(), geometry)


@dcnv4_op.register_fake
def _dcnv4_fake(
    input: torch.Tensor, offset_mask: torch.Tensor, kernel_size: int, stride: int, pad: int,
    dilation: int, group: int, group_channels: int, offset_scale: float, remove_center: bool,
    backend: str,
) -> torch.Tensor:
    return input.new_empty(*offset_mask.shape[:3], input.shape[3])


@torch.library.custom_op(
    "internimage::dcnv4_backward", mutates_args=(), device_types=("cpu", "cuda")
)
def dcnv4_backward_op(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    offset_mask: torch.Tensor,
    kernel_size: int,
    stride: int,
    pad: int,
    dilation: int,
    group: int,
    group_channels: int,
    offset_scale: float,
    remove_center: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward kernel: gradients for input and offset_mask (exact zeros in its padding)."""
    geometry = dcnv4_geometry(kernel_size, stride, pad, dilation, group, offset_scale,
                              remove_center)
    validate_dcnv4_inputs(input, offset_mask, geometry, group_channels)
    if grad_output.shape != (*offset_mask.shape[:3], input.shape[3]):
        raise ValueError(
            f"dcnv4_backward: grad_output shape {tuple(grad_output.shape)} does not match the "
            f"output shape {(*offset_mask.shape[:3], input.shape[3])}"
        )
    if backend == "triton":
        _alert_not_deterministic("dcnv4")
    return _kernels(backend).backward_dcnv4(
        grad_output.contiguous(), input.contiguous(), offset_mask.contiguous(), geometry
    )


@dcnv4_backward_op.register_fake
def _dcnv4_backward_fake(
    grad_output: torch.Tensor, input: torch.Tensor, offset_mask: torch.Tensor, kernel_size: int,
    stride: int, pad: int, dilation: int, group: int, group_channels: int, offset_scale: float,
    remove_center: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(input), torch.empty_like(offset_mask)


def _dcnv4_setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    input, offset_mask, *scalars = inputs
    ctx.save_for_backward(input, offset_mask)
    ctx.scalars = scalars


def _dcnv4_backward(
    ctx: Any, grad_output: torch.Tensor
) -> tuple[torch.Tensor | None, ...]:
    input, offset_mask = ctx.saved_tensors
    grad_input, grad_offset_mask = dcnv4_backward_op(
        grad_output, input, offset_mask, *ctx.scalars
    )
    return (grad_input, grad_offset_mask) + (None,) * len(ctx.scalars)


dcnv4_op.register_autograd(_dcnv4_backward, setup_context=_dcnv4_setup_context)
