"""Top-1 / top-5 evaluation over a data loader, summed across processes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from internimage.data.transforms import normalize, to_float_images
from internimage.errors import DataError
from internimage.train.distributed import all_reduce_sum
from internimage.train.metrics import topk_correct
from internimage.train.precision import autocast_context

__all__ = ["evaluate", "prepare_batch"]


def prepare_batch(
    images: torch.Tensor,
    device: torch.device,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` from a loader to normalised float ``[B, 3, S, S]`` on ``device``."""
    x = to_float_images(images.to(device, non_blocking=True), image_size)
    return normalize(x, mean, std)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    amp_dtype: torch.dtype | None = None,
    progress: object | None = None,
) -> dict[str, float]:
    """Cross-entropy loss, top-1 and top-5 accuracy (percent) of ``model`` on ``loader``.

    Under ``torch.distributed`` each process evaluates its shard and the sums are all-reduced, so
    every process returns the metrics of the whole set.

    Args:
        model: Classifier; put in eval mode for the call and restored afterwards.
        loader: Yields ``(uint8 images [B, C, H, W], labels [B])``.
        device: Where to compute.
        image_size: Network input side.
        mean: Normalisation mean.
        std: Normalisation standard deviation.
        amp_dtype: Autocast dtype, or None for full precision.
        progress: Optional tqdm-like object with ``update(n)``.

    Returns:
        ``{"loss", "top1", "top5", "count"}``.

    Raises:
        DataError: No image could be evaluated (an empty set, or every file unreadable), or a
            label is not a class of the model.
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # loss sum, top1, top5, count
    try:
        for images, labels in loader:
            if images.shape[0] == 0:
                continue
            x = prepare_batch(images, device, image_size, mean, std)
            labels = labels.to(device)
            with autocast_context(device, amp_dtype):
                logits = model(x)
            logits = logits.float()
            if int(labels.max()) >= logits.shape[1] or int(labels.min()) < 0:
                raise DataError(
                    f"the data has label {int(labels.max())} but the model has "
                    f"{logits.shape[1]} classes; evaluate it on data with its classes"
                )
            loss = F.cross_entropy(logits, labels, reduction="sum")
            top1, top5 = topk_correct(logits, labels, (1, 5))
            totals += torch.tensor([float(loss), top1, top5, labels.shape[0]], dtype=torch.float64)
            if progress is not None:
                progress.update(labels.shape[0])
    finally:
        model.train(was_training)
    if device.type == "cuda":
        totals = all_reduce_sum(totals.to(device)).cpu()
    else:
        totals = all_reduce_sum(totals)
    if totals[3] == 0:
        size = len(loader.dataset) if hasattr(loader, "dataset") else None  # type: ignore[arg-type]
        raise DataError(
            "no image to evaluate: "
            + (f"none of the {size} images could be read (each is named in a warning above)"
               if size else "the evaluation set is empty")
        )
    count = float(totals[3])
    return {
        "loss": float(totals[0]) / count,
        "top1": 100.0 * float(totals[1]) / count,
        "top5": 100.0 * float(totals[2]) / count,
        "count": int(totals[3]),
    }
