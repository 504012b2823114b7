"""Semantic-segmentation metrics from a confusion matrix over a whole evaluation set.

The numbers are the ones mmsegmentation reports for ADE20K and the like (``IoUMetric``):

* per class ``c``: ``IoU[c] = TP / (TP + FP + FN)`` and ``Acc[c] = TP / (TP + FN)``;
* ``mIoU`` and ``mAcc``: their means over the classes where they are defined (mmseg gives NaN
  for the others and takes ``nanmean``; here they are ``None`` and skipped the same way);
* ``aAcc``: correctly classified pixels over all counted pixels.

All of them are in percent. They are computed from counts summed over the whole set, never
averaged over images or batches, so the result does not depend on how the set was split into
batches or over processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from internimage.console import show_values
from internimage.errors import ConfigError, DataError

__all__ = ["SegmentationEvaluator"]



def _percent(numerator: int, denominator: int) -> float | None:
    """``100 * numerator / denominator``, or None where the ratio is undefined (0 / 0)."""
    if denominator == 0:
        return None
    return 100.0 * numerator / denominator


def _mean_defined(values: Sequence[float | None]) -> float:
    """Mean of the values that are not None (mmseg's ``nanmean``); 0.0 if there is none."""
    defined = [v for v in values if v is not None]
    # Unreachable with at least one counted pixel (its class has both ratios defined); kept so
    # that the function is total.
    if not defined:
        return 0.0
    return sum(defined) / len(defined)


def _show_values(values: torch.Tensor) -> str:
    """The distinct values of ``values``, shortened, for an error message."""
    return show_values(torch.unique(values).tolist())


class SegmentationEvaluator:
    """Accumulates a confusion matrix over batches and reports mIoU, mAcc, aAcc and per-class IoU.

    Call :meth:`update` with each batch's predicted class map and target, then :meth:`compute`
    once at the end. In a distributed run every process updates with its own share of the set
    and every process must call :meth:`compute` (it is a collective); each then gets the metrics
    of the whole set.

    Example:
        >>> evaluator = SegmentationEvaluator(150)
        >>> for images, targets in loader:  # doctest: +SKIP
        ...     evaluator.update(model(images).argmax(1), targets)
        >>> evaluator.compute()["mIoU"]  # doctest: +SKIP

    Args:
        num_classes: Number of classes; targets and predictions hold values in
            ``[0, num_classes)``.
        ignore_index: Target value of pixels that are not counted (unlabelled pixels; 255 in
            mmseg's ADE20K pipeline after ``reduce_zero_label``). Must lie outside
            ``[0, num_classes)``.
        class_names: One name per class, reported under ``"classes"``; ``class 0``, ``class 1``,
            ... when not given.

    Raises:
        ConfigError: ``num_classes`` is not an integer >= 1, ``ignore_index`` is not an integer
            or names a class, or ``class_names`` does not hold ``num_classes`` strings.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
    ) -> None:
        # bool is an int subclass; True as a class count is a mistake, not 1.
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ConfigError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
            raise ConfigError(f"ignore_index must be an integer, got {ignore_index!r}")
        if 0 <= ignore_index < num_classes:
            # A class that is also the ignore value could never be counted as a target, and its
            # IoU would be silently wrong.
            raise ConfigError(
                f"ignore_index {ignore_index} is one of the {num_classes} classes "
                f"[0, {num_classes}); choose a value outside them (for example 255 or -1)"
            )
        if class_names is None:
            names = tuple(f"class {i}" for i in range(num_classes))
        else:
            # A lone string is a Sequence[str] too, but never a list of names.
            if isinstance(class_names, str):
                raise ConfigError("class_names must be a sequence of names, not one string")
            names = tuple(class_names)
            if len(names) != num_classes:
                raise ConfigError(
                    f"class_names holds {len(names)} names but num_classes is {num_classes}"
                )
            bad = [n for n in names if not isinstance(n, str)]
            if bad:
                raise ConfigError(f"class_names must be strings, got {bad[0]!r}")
        self._num_classes = num_classes
        self._ignore_index = ignore_index
        self._class_names = names
        self._matrix: torch.Tensor
        self.reset()

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self._num_classes

    @property
    def ignore_index(self) -> int:
        """Target value of the pixels that are not counted."""
        return self._ignore_index

    @property
    def class_names(self) -> tuple[str, ...]:
        """One name per class."""
        return self._class_names

    @property
    def main_metric(self) -> str:
        """Key of :meth:`compute`'s result that picks the best checkpoint (higher is better)."""
        return "mIoU"

    @property
    def confusion(self) -> torch.Tensor:
        """A copy of this process's int64 ``[num_classes, num_classes]`` confusion matrix.

        Rows are target classes, columns predicted classes. It is not summed over processes,
        and changing it does not change the evaluator.
        """
        return self._matrix.clone()

    def reset(self) -> None:
        """Forget every pixel counted so far."""
        # On the CPU until the first update says where the inputs live.
        k = self._num_classes
        self._matrix = torch.zeros(k, k, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Count one batch of pixels.

        Args:
            prediction: Integer ``[N, H, W]`` predicted class per pixel (the argmax over the
                class dimension of the logits).
            target: Integer ``[N, H, W]`` ground-truth class per pixel, or ``ignore_index``;
                on the same device as ``prediction``.

        Raises:
            TypeError: An input is not a tensor.
            ValueError: The shapes or devices differ, an input is not of an integer type, or a
                counted pixel's prediction lies outside ``[0, num_classes)``.
            DataError: A target value is neither a class in ``[0, num_classes)`` nor
                ``ignore_index`` (for example labels that were not shifted by
                ``reduce_zero_label``).
        """
        for name, tensor in (("prediction", prediction), ("target", target)):
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
            if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
                raise ValueError(
                    f"{name} must hold integer class indices, got dtype {tensor.dtype}"
                    + (" (take the argmax over the class dimension of the logits first)"
                       if name == "prediction" else "")
                )
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction and target must have the same shape [N, H, W], got prediction "
                f"{tuple(prediction.shape)} and target {tuple(target.shape)}"
            )
        if prediction.device != target.device:
            raise ValueError(
                f"prediction and target must be on the same device, got prediction on "
                f"{prediction.device} and target on {target.device}"
            )
        k = self._num_classes
        # int64 before comparing: a uint8 target compared with ignore_index -1, or a product
        # target * k, would wrap around in the narrow type.
        flat_target = target.reshape(-1).long()  # [N*H*W]
        flat_prediction = prediction.reshape(-1).long()  # [N*H*W]
        counted = flat_target != self._ignore_index
        # The prediction at an ignored pixel does not matter (as in mmseg), so only counted
        # pixels are kept and checked.
        flat_target = flat_target[counted]  # [P], P = counted pixels
        flat_prediction = flat_prediction[counted]  # [P]
        bad_target = (flat_target < 0) | (flat_target >= k)
        if bool(bad_target.any()):
            raise DataError(
                f"target holds value(s) {_show_values(flat_target[bad_target])} that are neither "
                f"a class in [0, {k}) nor ignore_index {self._ignore_index}; check num_classes, "
                f"ignore_index and whether the labels need reduce_zero_label"
            )
        bad_prediction = (flat_prediction < 0) | (flat_prediction >= k)
        if bool(bad_prediction.any()):
            raise ValueError(
                f"prediction holds value(s) {_show_values(flat_prediction[bad_prediction])} "
                f"outside the {k} classes [0, {k}) at labelled pixels"
            )
        # One bincount over the pair index target * k + prediction fills the whole matrix at
        # once; int64 counts cannot overflow for any realistic set.
        counts = torch.bincount(flat_target * k + flat_prediction, minlength=k * k)  # [k*k]
        if self._matrix.device != counts.device:
            # Follow the inputs: the first update (or one on another device) moves the matrix.
            self._matrix = self._matrix.to(counts.device)
        self._matrix += counts.view(k, k)

    def _gathered_matrix(self) -> torch.Tensor:
        """The confusion matrix summed over all processes, as a new CPU tensor."""
        matrix = self._matrix
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return matrix.cpu().clone()
        if "nccl" in str(dist.get_backend()).lower():
            # nccl reduces CUDA tensors only, on this process's current GPU.
            buffer = matrix.to(torch.device("cuda", torch.cuda.current_device()), copy=True)
        else:
            # gloo (and mpi) reduce CPU tensors; a copy leaves the accumulated counts as they
            # were, so that compute() can be called again.
            buffer = matrix.to("cpu", copy=True)
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        return buffer.cpu()

    def compute(self) -> dict[str, Any]:
        """The metrics of every pixel counted since the last :meth:`reset`, over all processes.

        Under ``torch.distributed`` with more than one process this is a collective: every
        process must call it. It does not change the evaluator, so calling it again gives the
        same result.

        Returns:
            ``"mIoU"``, ``"mAcc"``, ``"aAcc"``: floats in percent (0..100);
            ``"IoU"``, ``"Acc"``: per-class lists in percent, ``None`` for a class that is in
            neither target nor prediction (IoU) or not in the target (Acc), skipped by the
            means; ``"pixels"``: the number of counted pixels; ``"classes"``: the class names.

        Raises:
            DataError: No pixel was counted (on any process).
        """
        matrix = self._gathered_matrix()
        total = int(matrix.sum())
        if total == 0:
            raise DataError(
                "no labelled pixel to evaluate: every target pixel was ignore_index "
                f"{self._ignore_index}, or update() was never called"
            )
        # Python ints: exact counts, and the ratios below in float64 like mmseg's numpy.
        intersect = matrix.diagonal().tolist()  # [k] true positives
        area_target = matrix.sum(dim=1).tolist()  # [k] TP + FN
        area_prediction = matrix.sum(dim=0).tolist()  # [k] TP + FP
        iou = [
            _percent(tp, t + p - tp)
            for tp, t, p in zip(intersect, area_target, area_prediction, strict=True)
        ]
        acc = [_percent(tp, t) for tp, t in zip(intersect, area_target, strict=True)]
        return {
            "mIoU": _mean_defined(iou),
            "mAcc": _mean_defined(acc),
            "aAcc": 100.0 * sum(intersect) / total,
            "IoU": iou,
            "Acc": acc,
            "pixels": total,
            "classes": list(self._class_names),
        }
