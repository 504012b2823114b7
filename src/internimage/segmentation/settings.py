"""Settings of the segmentation task: its section of the training config (``segmentation``),
its datasets and its presets.

The training loop's config (:class:`~internimage.train.config.TrainConfig`) holds this section
under ``segmentation``; it finds the class, the datasets and the presets here through
``internimage.train.config.task_settings``.
"""

from __future__ import annotations

from dataclasses import dataclass

from internimage.errors import ConfigError
from internimage.train.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
)

__all__ = ["DATASETS", "SETTINGS", "SegmentationConfig", "presets"]

#: The ``data.dataset`` values of the task.
DATASETS = ("fashion-mnist-scenes", "ade20k", "segmentation-folder")


@dataclass(frozen=True)
class SegmentationConfig:
    """Settings of the segmentation task (UperNet head, labels, augmentation, demo scenes).

    Attributes:
        head_channels: Width of the UPerHead (upstream: 512).
        auxiliary_channels: Width of the FCN auxiliary head on stage 3 (upstream: 256).
        auxiliary_weight: Weight of the auxiliary loss (upstream: 0.4).
        ignore_index: Label value that is not trained on nor counted.
        reduce_zero_label: ADE20K's convention: label 0 ("other") is ignored, k becomes k - 1.
        scale_range: Random rescale ratios of training images (upstream: 0.5-2.0).
        cat_max_ratio: Largest share of one class in a training crop (retried up to 10
            times; 1.0 disables the rule).
        hflip: Probability of a horizontal flip.
        photometric: Apply mmseg's photometric distortion to training images.
    """

    head_channels: int = 512
    auxiliary_channels: int = 256
    auxiliary_weight: float = 0.4
    ignore_index: int = 255
    reduce_zero_label: bool = True
    scale_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    hflip: float = 0.5
    photometric: bool = True

    def __post_init__(self) -> None:
        if self.head_channels < 1 or self.auxiliary_channels < 1:
            raise ConfigError("segmentation.head_channels and auxiliary_channels must be >= 1")
        if self.auxiliary_weight < 0:
            raise ConfigError("segmentation.auxiliary_weight must be >= 0")
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ConfigError(
                f"segmentation.scale_range must be 0 < low <= high, got {self.scale_range}"
            )
        if not 0 < self.cat_max_ratio <= 1:
            raise ConfigError(
                f"segmentation.cat_max_ratio must be in (0, 1], got {self.cat_max_ratio}"
            )
        if not 0 <= self.hflip <= 1:
            raise ConfigError(f"segmentation.hflip is a probability, got {self.hflip}")


#: The class of the task's section of the training config.
SETTINGS = SegmentationConfig


def presets() -> dict[str, TrainConfig]:
    """The task's named starting points for ``internimage train --preset``."""
    return {
        # Upstream's ADE20K recipe for UperNet + InternImage-T (set data.root): AdamW 6e-5 at a
        # total batch of 16 (here per 512 images: 6e-5 * 32), weight decay 0.05, 160k iterations
        # with 1500 of linear warm-up from 1e-6 of the peak, then poly decay (power 1) to 0; crops
        # of 512, the dense T backbone's layer scale 1.0 and drop path 0.2; layer-wise decay 1.0
        # (none in effect) for T/S/B (0.94 for L/XL, 0.95 for H, with clip_grad 0.1). Evaluated
        # every 13 epochs, about upstream's 16k iterations on ADE20K's 20,210 training images.
        "ade20k": TrainConfig(
            task="segmentation",
            model=ModelConfig(name="internimage_t", drop_path_rate=0.2, layer_scale=1.0),
            data=DataConfig(dataset="ade20k", image_size=512, num_workers=4),
            segmentation=SegmentationConfig(),
            optim=OptimConfig(lr=6e-5 * 32, weight_decay=0.05),
            schedule=ScheduleConfig(steps=160_000, warmup_steps=1500, warmup_lr=6e-5 * 32 * 1e-6,
                                    min_lr=0.0, decay="poly", power=1.0),
            batch_size=16,
            ema_decay=None,
            eval_every=13,
            log_every=50,
        ),
        # The demo: UperNet (heads 64/32 wide, far narrower than ADE20K's 512/256, as the model is)
        # on the main job's network (atto widths, depths 1-1-3-1), trained on Fashion-MNIST scenes
        # (2000 training and 200 validation canvases of 128 px with 11 classes, generated on first
        # use). Like a real dense model it is meant to start from a classifier: set model.finetune
        # to a `fashion-mnist` run's best.pt (benchmarks/bench_segmentation.py does both). About 50
        # images/s on the 2-core CPU at batch 8, 40 s per epoch: 70 epochs reached 56.9% held-out
        # mIoU in 47 minutes (57.1% at epoch 60; 44.4% at 10, 54.9% at 45). Three-epoch trials
        # from the classifier: batch 8 at 1e-3 per step (6.4e-2 per 512 images) 33.5%, batch 16 at
        # 1e-3 24.1%; from scratch (depths 2-2-6-2, batch 16) 22.5%; wider heads 128/64 39.1% and
        # 256/128 41.8% but fewer images/s; twice the rate 36.8%. Larger inputs (the classifier
        # saw its items at 64 px, the scenes' are 20 to 64) do not pay for their cost: scenes
        # rescaled to 256 px reached 35.6% in three epochs at 14 images/s, to 192 px 44.0% in five
        # epochs (6.5 minutes) at 28 images/s, about what 128 px reaches in the same time.
        "fashion-mnist-scenes": TrainConfig(
            task="segmentation",
            model=ModelConfig(name="internimage_atto", drop_path_rate=0.0, depths=(1, 1, 3, 1)),
            data=DataConfig(dataset="fashion-mnist-scenes", image_size=128, num_workers=0),
            segmentation=SegmentationConfig(
                head_channels=64, auxiliary_channels=32, reduce_zero_label=False,
                scale_range=(0.75, 1.5), photometric=False,
            ),
            optim=OptimConfig(lr=6.4e-2, weight_decay=0.05, clip_grad=5.0),
            schedule=ScheduleConfig(epochs=70, warmup_epochs=1.0, warmup_lr=1e-5, min_lr=1e-5),
            batch_size=8,
            ema_decay=None,
            processes="auto",
            log_every=20,
        ),
    }
