"""Semantic segmentation as a task of the one training loop: UperNet over InternImage.

Importing this module registers the task (``TrainConfig.task = "segmentation"``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from internimage.data.scenes import default_scenes_root, write_scenes_ade
from internimage.data.transforms import normalize
from internimage.errors import ConfigError
from internimage.models.hf import InternImageHFConfig
from internimage.segmentation.augment import SegmentationAugmentation
from internimage.segmentation.data import (
    ADE20KDataset,
    SegmentationBatch,
    SegmentationFolderDataset,
    collate_segmentation,
    read_classes_file,
)
from internimage.segmentation.evaluate import test_settings
from internimage.segmentation.inference import predict_batch
from internimage.segmentation.metrics import SegmentationEvaluator
from internimage.segmentation.upernet import upernet_config
from internimage.train.distributed import on_rank_zero_first
from internimage.train.precision import autocast_context
from internimage.train.tasks import (
    TASKS,
    Autocast,
    Task,
    groups_with_heads,
    limit_sets,
    prepare_backbone,
)

__all__ = ["SegmentationTask"]


class SegmentationTask(Task):
    """Semantic segmentation: UperNet (transformers) on InternImage, cross-entropy with the
    auxiliary head's loss, mIoU from a confusion matrix over the whole validation set."""

    name = "segmentation"
    main_metric = "mIoU"
    curve_metrics = (("mIoU", "mIoU"), ("mAcc", "mean accuracy"), ("aAcc", "pixel accuracy"))
    curve_label = "validation (%)"

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        data, seg = self.config.data, self.config.segmentation
        if data.dataset == "fashion-mnist-scenes":
            root = Path(data.root) if data.root is not None else default_scenes_root()
            on_rank_zero_first(lambda: write_scenes_ade(
                root, train_count=data.scenes_train, val_count=data.scenes_val,
                seed=data.scenes_seed, size=data.scene_size,
            ))
            # The scenes' 0 is the background class, not ADE20K's "unlabelled".
            train_set: Dataset = ADE20KDataset(root, "training", reduce_zero_label=False)
            val_set: Dataset = ADE20KDataset(root, "validation", reduce_zero_label=False)
        elif data.dataset == "ade20k":
            root = self._root()
            train_set = ADE20KDataset(root, "training", reduce_zero_label=seg.reduce_zero_label)
            val_set = ADE20KDataset(root, "validation", reduce_zero_label=seg.reduce_zero_label)
        else:  # segmentation-folder
            root = self._root()
            classes = read_classes_file(root / "classes.txt")
            train_set, val_set = (
                SegmentationFolderDataset(
                    root / "images" / split, root / "masks" / split, classes,
                    ignore_index=seg.ignore_index, reduce_zero_label=seg.reduce_zero_label,
                )
                for split in (data.train_split, data.val_split)
            )
        self.classes = tuple(train_set.classes)  # type: ignore[attr-defined]
        return limit_sets(data, train_set, val_set)

    def _root(self) -> Path:
        if self.config.data.root is None:
            raise ConfigError(
                f"data.dataset={self.config.data.dataset!r} needs data.root (--data-root DIR)"
            )
        return Path(self.config.data.root)

    def collate(self, batch: list[Any]) -> SegmentationBatch:
        return collate_segmentation(batch, ignore_index=self.config.segmentation.ignore_index)

    def build_model(self) -> nn.Module:
        from transformers import UperNetForSemanticSegmentation

        settings, seg = self.config.model, self.config.segmentation
        # The overrides include the ablation options (model.dcn_weights, ...), which the
        # transformers config carries as fields of their own and builds the backbone with.
        backbone = InternImageHFConfig.from_variant(
            settings.name, drop_path_rate=settings.drop_path_rate,
            **{k: list(v) if isinstance(v, tuple) else v
               for k, v in settings.architecture_overrides().items()},
        )
        config = upernet_config(
            backbone, num_classes=len(self.classes), hidden_size=seg.head_channels,
            auxiliary_channels=seg.auxiliary_channels, auxiliary_loss_weight=seg.auxiliary_weight,
            ignore_index=seg.ignore_index,
        )
        model = UperNetForSemanticSegmentation(config)
        prepare_backbone(model.backbone.model, settings)
        return model

    def setup(self, device: torch.device) -> None:
        seg = self.config.segmentation
        self.augment = SegmentationAugmentation(
            self.config.data.image_size, scale_range=seg.scale_range, hflip=seg.hflip,
            photometric=seg.photometric, ignore_index=seg.ignore_index,
            cat_max_ratio=seg.cat_max_ratio,
        ).to(device)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        optim = self.config.optim
        return groups_with_heads(model, model.backbone.model, optim.weight_decay,
                                 layer_decay=optim.layer_decay)

    def _normalized(self, images: torch.Tensor) -> torch.Tensor:
        data = self.config.data
        return normalize(images, data.mean, data.std)

    def training_losses(
        self, model: nn.Module, batch: SegmentationBatch, device: torch.device,
        autocast: Autocast,
    ) -> dict[str, torch.Tensor]:
        # Padding from the collate is image content to the augmentation; its labels are the
        # ignore index, so the loss skips it.
        images, masks, _ = batch
        x = images.to(device, non_blocking=True).float().div_(255.0)  # [B, 3, H, W]
        labels = masks.to(device, non_blocking=True)  # [B, H, W]
        x, labels = self.augment(x, labels)
        with autocast():
            # The model computes the main and the auxiliary cross-entropy itself.
            output = model(pixel_values=self._normalized(x), labels=labels)
        return {"loss": output.loss.float()}

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        loader: Iterable[SegmentationBatch],
        device: torch.device,
        amp_dtype: torch.dtype | None,
    ) -> dict[str, float]:
        """mIoU, mAcc and aAcc by the test procedure of ``internimage eval`` (whole image, single
        scale): each image at its own size is resized so that its short side is the training
        crop (``data.image_size``), predicted, and its prediction resized back to its mask."""
        data, seg = self.config.data, self.config.segmentation
        settings = test_settings(data.image_size, data.mean, data.std)
        evaluator = SegmentationEvaluator(
            len(self.classes), ignore_index=seg.ignore_index, class_names=self.classes
        )
        for images, masks, sizes in loader:
            # Items of one size are predicted together; padding is cut off first.
            groups: dict[tuple[int, int], list[int]] = {}
            for index, (height, width) in enumerate(sizes.tolist()):
                groups.setdefault((height, width), []).append(index)
            for (height, width), members in groups.items():
                chosen = torch.tensor(members)
                with autocast_context(device, amp_dtype):
                    probs = predict_batch(
                        model, images[chosen, :, :height, :width], settings
                    )  # [b, C, h, w]
                evaluator.update(probs.argmax(dim=1), masks[chosen, :height, :width].to(device))
        result = evaluator.compute()
        return {"mIoU": result["mIoU"], "mAcc": result["mAcc"], "aAcc": result["aAcc"]}

    def describe(self, metrics: dict[str, float]) -> str:
        return (f"mIoU {metrics['mIoU']:.2f}% mAcc {metrics['mAcc']:.2f}% "
                f"aAcc {metrics['aAcc']:.2f}%")

    def checkpoint_metadata(self) -> dict[str, Any]:
        data, seg = self.config.data, self.config.segmentation
        return {
            "classes": list(self.classes),
            "image_size": data.image_size,
            "mean": list(data.mean),
            "std": list(data.std),
            "ignore_index": seg.ignore_index,
            "reduce_zero_label": seg.reduce_zero_label,
        }


TASKS[SegmentationTask.name] = SegmentationTask
