"""DCNv4's packed ``offset_mask`` layout and its conversion to and from DCNv3's two tensors.

DCNv4 (FlashInternImage) passes offsets and point weights in one tensor ``[N, Ho, Wo, P]``. With
K points per group and G groups, group g owns columns ``[3Kg, 3K(g+1))``: K (dx, dy) pairs, x
first, then K weights. Columns ``[3GK, P)`` pad the row to ``P = ceil(3GK / 8) * 8`` and are never
read. Per group, the (dx, dy) pairs are in DCNv3's offset order and the weights in its mask order,
so unpacking is a pure re-layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["pack_offset_mask", "unpack_offset_mask"]


def unpack_offset_mask(
    offset_mask: torch.Tensor, group: int, points: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """DCNv3's ``(offset, mask)`` from DCNv4's packed tensor, ignoring the padding columns.

    Differentiable: the padding columns get a zero gradient.

    Args:
        offset_mask: ``[N, Ho, Wo, P]`` with ``P >= 3*G*K``.
        group: G.
        points: K, points per group.

    Returns:
        ``offset`` ``[N, Ho, Wo, G*K*2]`` and ``mask`` ``[N, Ho, Wo, G*K]``, contiguous.
    """
    n, ho, wo, _ = offset_mask.shape
    k = points
    blocks = offset_mask[..., : 3 * group * k].unflatten(-1, (group, 3 * k))  # [N, Ho, Wo, G, 3K]
    offset = blocks[..., : 2 * k].reshape(n, ho, wo, group * 2 * k)
    mask = blocks[..., 2 * k :].reshape(n, ho, wo, group * k)
    return offset.contiguous(), mask.contiguous()


def pack_offset_mask(
    offset: torch.Tensor, mask: torch.Tensor, group: int, points: int, columns: int
) -> torch.Tensor:
    """DCNv4's packed tensor from DCNv3's ``(offset, mask)``, with zeros in the padding columns.

    The backward of the unpacking: it packs DCNv3's offset and mask gradients into the gradient
    of ``offset_mask``.

    Args:
        offset: ``[N, Ho, Wo, G*K*2]``.
        mask: ``[N, Ho, Wo, G*K]``.
        group: G.
        points: K, points per group.
        columns: P, the padded width.

    Returns:
        ``[N, Ho, Wo, P]``.
    """
    k = points
    blocks = torch.cat(
        (offset.unflatten(-1, (group, 2 * k)), mask.unflatten(-1, (group, k))), dim=-1
    )  # [N, Ho, Wo, G, 3K]
    return F.pad(blocks.flatten(-2), (0, columns - 3 * group * k))
