"""Accuracy, metric logs (CSV, optional TensorBoard) and the training-curve plot."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

__all__ = ["MetricLog", "plot_curves", "topk_correct"]


def topk_correct(
    logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> list[int]:
    """Number of rows whose label is among the ``k`` highest logits, for each ``k``.

    ``k`` larger than the class count counts every row.
    """
    if logits.shape[0] == 0:
        return [0 for _ in ks]
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # [B, kmax]
    hits = top.eq(labels.view(-1, 1))
    return [int(hits[:, : min(k, kmax)].any(dim=1).sum()) for k in ks]


class MetricLog:
    """Rows of named values appended to a CSV file (and to TensorBoard when installed).

    The header is the union of keys, in first-seen order; a resumed run drops rows past the step
    it resumes from so no step appears twice.

    Args:
        path: CSV file.
        tensorboard_dir: Folder for TensorBoard events; None or tensorboard missing: no events.
    """

    def __init__(self, path: str | Path, tensorboard_dir: str | Path | None = None) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, float | int | str]] = []
        if self.path.is_file():
            with self.path.open(newline="") as handle:
                self.rows = [dict(row) for row in csv.DictReader(handle)]
        self._writer = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except (ModuleNotFoundError, ImportError):
                SummaryWriter = None  # noqa: N806 - optional dependency
            if SummaryWriter is not None:
                self._writer = SummaryWriter(str(tensorboard_dir))

    def truncate_after(self, step: int) -> None:
        """Forget rows with ``step`` greater than ``step`` (resuming from that step)."""
        self.rows = [row for row in self.rows if float(row.get("step", 0) or 0) <= step]
        self._rewrite()

    def append(self, row: Mapping[str, float | int | str]) -> None:
        """Add one row and rewrite the file."""
        self.rows.append(dict(row))
        self._rewrite()
        if self._writer is not None and "step" in row:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float):
                    self._writer.add_scalar(key, value, int(row["step"]))
            self._writer.flush()

    def _rewrite(self) -> None:
        from internimage.files import atomic_write_bytes

        keys: list[str] = []
        for row in self.rows:
            keys.extend(k for k in row if k not in keys)
        lines = [",".join(keys)]
        for row in self.rows:
            lines.append(",".join(_format(row.get(k, "")) for k in keys))
        atomic_write_bytes(self.path, ("\n".join(lines) + "\n").encode("utf-8"))

    def column(self, key: str) -> list[tuple[float, float]]:
        """``(step, value)`` pairs of the rows that have ``key``."""
        out = []
        for row in self.rows:
            value = row.get(key, "")
            if value not in ("", None):
                out.append((float(row["step"]), float(value)))
        return out

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self._writer is not None:
            self._writer.close()


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.8g}"
    return str(value)


def plot_curves(
    steps_log: MetricLog,
    epochs_log: MetricLog,
    path: str | Path,
    *,
    metrics: Sequence[tuple[str, str]] = (
        ("val_top1", "top-1"), ("val_top5", "top-5"), ("ema_top1", "EMA top-1")
    ),
    metric_label: str = "validation accuracy (%)",
) -> None:
    """Training loss and validation metrics against optimiser steps, as a PNG.

    Args:
        steps_log: Rows with ``step`` and ``train_loss``.
        epochs_log: Rows with ``step``, ``val_loss`` and the ``metrics`` keys.
        path: The PNG to write.
        metrics: ``(column, label)`` of the metrics in the right-hand panel.
        metric_label: Its axis label.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    train = steps_log.column("train_loss")
    if train:
        loss_ax.plot(*zip(*train, strict=True), label="train loss", linewidth=0.8)
    val_loss = epochs_log.column("val_loss")
    if val_loss:
        loss_ax.plot(*zip(*val_loss, strict=True), "o-", label="validation loss")
    loss_ax.set_xlabel("optimiser step")
    loss_ax.set_ylabel("loss")
    loss_ax.grid(alpha=0.3)
    loss_ax.legend()
    for key, label in metrics:
        series = epochs_log.column(key)
        if series:
            acc_ax.plot(*zip(*series, strict=True), "o-", label=label)
    acc_ax.set_xlabel("optimiser step")
    acc_ax.set_ylabel(metric_label)
    acc_ax.grid(alpha=0.3)
    acc_ax.legend()
    figure.tight_layout()
    from internimage.draw import figure_png
    from internimage.files import atomic_write_bytes

    atomic_write_bytes(Path(path), figure_png(figure, dpi=110))
