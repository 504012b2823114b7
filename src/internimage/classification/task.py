"""The classification task: cross-entropy on mixed soft targets, top-1/top-5 accuracy.

Registered as ``task="classification"`` when imported (``internimage.train.tasks.create_task``
does that).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from internimage.classification.augment import (
    MixupCutmix,
    TrainAugmentation,
    soft_target_cross_entropy,
)
from internimage.classification.data import build_datasets, collate_skipping_unreadable
from internimage.classification.evaluate import evaluate
from internimage.data.transforms import normalize, to_float_images
from internimage.errors import CheckpointFileError
from internimage.train.config import TrainConfig
from internimage.train.tasks import TASKS, Autocast, Batch, Task

__all__ = ["ClassificationTask", "create_classifier"]


def create_classifier(config: TrainConfig, num_classes: int) -> nn.Module:
    """The model of ``config.model`` with a ``num_classes`` head, fine-tuning weights loaded."""
    import internimage

    settings = config.model
    model = internimage.create_model(
        settings.name,
        pretrained=settings.pretrained,
        num_classes=num_classes,
        drop_path_rate=settings.drop_path_rate,
        **settings.architecture_overrides(),
    )
    if settings.finetune is not None:
        # Non-strict: the classifier of the source usually has another class count; every other
        # tensor must match.
        result = internimage.load_checkpoint(model, settings.finetune, strict=False)
        skipped = result.missing + tuple(name for name, *_ in result.mismatched)
        head_only = all(name.startswith("head.") for name in skipped)
        if not head_only or result.unexpected:
            raise CheckpointFileError(
                f"fine-tuning checkpoint {settings.finetune} does not fit {settings.name} beyond "
                f"its classifier:\n{result.describe()}"
            )
    if settings.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


class ClassificationTask(Task):
    """Image classification: cross-entropy on mixed soft targets, top-1/top-5 accuracy."""

    name = "classification"
    main_metric = "top1"
    curve_metrics = (("top1", "top-1"), ("top5", "top-5"))
    curve_label = "validation accuracy (%)"

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        train_set, val_set, self.classes = build_datasets(self.config.data)
        return train_set, val_set

    def collate(self, batch: list[Any]) -> Batch:
        return collate_skipping_unreadable(batch)

    def build_model(self) -> nn.Module:
        return create_classifier(self.config, len(self.classes))

    def setup(self, device: torch.device) -> None:
        cfg = self.config
        self.augment = TrainAugmentation(cfg.augment, cfg.data.image_size).to(device)
        self.mixer = MixupCutmix(cfg.augment, len(self.classes))

    def training_losses(
        self, model: nn.Module, batch: Batch, device: torch.device, autocast: Autocast
    ) -> dict[str, torch.Tensor]:
        cfg = self.config
        images, labels = batch
        x = to_float_images(images.to(device, non_blocking=True), cfg.data.image_size)
        labels = labels.to(device, non_blocking=True)
        x = self.augment(x)
        x = self.augment.erase(normalize(x, cfg.data.mean, cfg.data.std))
        x, targets = self.mixer(x, labels)
        with autocast():
            logits = model(x)
        return {"loss": soft_target_cross_entropy(logits, targets)}

    def evaluate(
        self,
        model: nn.Module,
        loader: Iterable[Batch],
        device: torch.device,
        amp_dtype: torch.dtype | None,
    ) -> dict[str, float]:
        data = self.config.data
        result = evaluate(model, loader, device=device, image_size=data.image_size,
                          mean=data.mean, std=data.std, amp_dtype=amp_dtype)
        return {"loss": result["loss"], "top1": result["top1"], "top5": result["top5"]}

    def describe(self, metrics: dict[str, float]) -> str:
        return f"top-1 {metrics['top1']:.2f}% top-5 {metrics['top5']:.2f}%"

    def checkpoint_metadata(self) -> dict[str, Any]:
        data = self.config.data
        return {
            "classes": list(self.classes),
            "image_size": data.image_size,
            "mean": list(data.mean),
            "std": list(data.std),
            "crop_fraction": data.crop_fraction,
            "interpolation": data.interpolation,
        }


TASKS[ClassificationTask.name] = ClassificationTask
