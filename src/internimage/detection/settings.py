"""Settings of the detection task: its section of the training config (``detection``), its
datasets and its presets.

The training loop's config (:class:`~internimage.train.config.TrainConfig`) holds this section
under ``detection``; it finds the class, the datasets and the presets here through
``internimage.train.config.task_settings``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from internimage.errors import ConfigError
from internimage.train.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
)

__all__ = ["DATASETS", "SETTINGS", "DetectionConfig", "presets"]

#: The ``data.dataset`` values of the task.
DATASETS = ("fashion-mnist-scenes", "coco")


@dataclass(frozen=True)
class DetectionConfig:
    """Settings of the detection task (Mask R-CNN widths, image sizes, sampling, augmentation).

    The defaults are upstream's COCO Mask R-CNN; small data wants far narrower heads and fewer
    proposals (see the ``fashion-mnist-scenes-detection`` preset).

    Attributes:
        fpn_channels: Width of the FPN (and of the RPN conv and the RoI features).
        box_fc_channels: Width of the box head's two fully connected layers.
        mask_convs: 3x3 convolutions of the mask head.
        mask_channels: Their width.
        min_sizes: Shorter image side after resizing; training draws one per image (multi-scale),
            evaluation uses the last.
        max_size: Upper limit of the longer side.
        rpn_batch: Anchors sampled per image for the RPN loss.
        roi_batch: Proposals sampled per image for the box and mask losses.
        proposals_train: Proposals per image after the RPN's NMS in training.
        proposals_test: Same at test time.
        detections_per_image: Detections kept per image.
        score_threshold: Detections scoring less are dropped.
        frozen_stages: Backbone stages kept frozen (-1 none, 0 the stem, k the stem and k
            stages).
        hflip: Probability of a horizontal flip of a training image.
        keep_empty: Train on images without annotations too (as negatives).
    """

    fpn_channels: int = 256
    box_fc_channels: int = 1024
    mask_convs: int = 4
    mask_channels: int = 256
    min_sizes: tuple[int, ...] = (800,)
    max_size: int = 1333
    rpn_batch: int = 256
    roi_batch: int = 512
    proposals_train: int = 1000
    proposals_test: int = 1000
    detections_per_image: int = 100
    score_threshold: float = 0.05
    frozen_stages: int = -1
    hflip: float = 0.5
    keep_empty: bool = False

    def __post_init__(self) -> None:
        for name in ("fpn_channels", "box_fc_channels", "mask_convs", "mask_channels",
                     "rpn_batch", "roi_batch", "proposals_train", "proposals_test",
                     "detections_per_image"):
            if getattr(self, name) < 1:
                raise ConfigError(f"detection.{name} must be >= 1, got {getattr(self, name)}")
        if not self.min_sizes or min(self.min_sizes) < 1 or max(self.min_sizes) > self.max_size:
            raise ConfigError(
                f"detection.min_sizes must be positive and at most max_size={self.max_size}, "
                f"got {self.min_sizes}"
            )
        if not -1 <= self.frozen_stages <= 4:
            raise ConfigError(f"detection.frozen_stages must be in -1..4, got {self.frozen_stages}")
        if not 0 <= self.hflip <= 1:
            raise ConfigError(f"detection.hflip is a probability, got {self.hflip}")
        if not 0 <= self.score_threshold <= 1:
            raise ConfigError(
                f"detection.score_threshold must be in [0, 1], got {self.score_threshold}"
            )


#: The class of the task's section of the training config.
SETTINGS = DetectionConfig


def presets() -> dict[str, TrainConfig]:
    """The task's named starting points for ``internimage train --preset``."""
    presets = {
        # Upstream's COCO Mask R-CNN recipe for InternImage-T (set data.root to a COCO folder with
        # train2017/, val2017/ and annotations/): the dense T backbone (layer scale 1.0, drop path
        # 0.2) from the released ImageNet weights, AdamW 1e-4 at a total batch of 16 (per 512
        # images: 1e-4 * 32), weight decay 0.05, 12 epochs with the rate divided by 10 after
        # epochs 8 and 11, 500 steps of linear warm-up from 0.1% of the peak, images resized to a
        # shorter side of 800 (longer side at most 1333), flip 0.5, images without annotations
        # left out of training.
        "coco-1x": TrainConfig(
            task="detection",
            model=ModelConfig(name="internimage_t", pretrained=True, drop_path_rate=0.2,
                              layer_scale=1.0),
            data=DataConfig(dataset="coco", train_split="train2017", val_split="val2017",
                            num_workers=4),
            detection=DetectionConfig(),
            optim=OptimConfig(lr=1e-4 * 32, weight_decay=0.05, clip_grad=None),
            schedule=ScheduleConfig(epochs=12, warmup_steps=500, warmup_lr=1e-4 * 32 * 1e-3,
                                    decay="step", milestones=(8, 11), warmup_epochs=0.0),
            batch_size=16,
            ema_decay=None,
            log_every=50,
        ),
        # The detection demo: Mask R-CNN on the main job's network (atto widths, depths 1-1-3-1) on
        # the Fashion-MNIST scenes written as COCO instances (128 px, 2 to 5 items each). The heads
        # are sized to the data, as measured on the 2-core CPU (a training step of batch 8 took
        # 1.9 s with COCO's heads and 512 sampled RoIs per image, 0.58 s with these): FPN 64
        # channels, box FCs 256, mask convs 64, 64 sampled RoIs, 256 proposals in training and
        # 100 at test time. Like the segmentation demo it starts from a `fashion-mnist` classifier
        # (model.finetune): 20 epochs at 1e-3 per step (6.4e-2 per 512 images) reached 54.9 box AP
        # and 49.3 mask AP on the held-out scenes in 50 minutes at 13 images/s (one epoch: 25.8).
        "fashion-mnist-scenes-detection": TrainConfig(
            task="detection",
            model=ModelConfig(name="internimage_atto", drop_path_rate=0.0, depths=(1, 1, 3, 1)),
            data=DataConfig(dataset="fashion-mnist-scenes", num_workers=0),
            detection=DetectionConfig(
                fpn_channels=64, box_fc_channels=256, mask_convs=4, mask_channels=64,
                min_sizes=(128,), max_size=128, rpn_batch=128, roi_batch=64, proposals_train=256,
                proposals_test=100, detections_per_image=50, keep_empty=True,
            ),
            optim=OptimConfig(lr=6.4e-2, weight_decay=0.05, clip_grad=5.0),
            schedule=ScheduleConfig(epochs=20, warmup_epochs=1.0, warmup_lr=1e-5, min_lr=1e-5),
            batch_size=8,
            ema_decay=None,
            processes="auto",
            log_every=20,
        ),
    }

    # The 3x recipe: 36 epochs (steps after 27 and 33) with multi-scale training. Upstream's 3x
    # configs draw DETR-style random resize-and-crop policies; here the shorter side is drawn from
    # 480..800 in steps of 32 (no crop), the usual multi-scale approximation.
    presets["coco-3x"] = dataclasses.replace(
        presets["coco-1x"],
        detection=DetectionConfig(min_sizes=tuple(range(480, 801, 32))),
        schedule=dataclasses.replace(presets["coco-1x"].schedule, epochs=36, milestones=(27, 33)),
    )
    return presets
