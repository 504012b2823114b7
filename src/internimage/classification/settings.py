"""Settings of the classification task: its section of the training config (``augment``), its
datasets and its presets.

The training loop's config (:class:`~internimage.train.config.TrainConfig`) holds this section
under ``augment``; it finds the class, the datasets and the presets here through
``internimage.train.config.task_settings``.
"""

from __future__ import annotations

from internimage.classification.augment import AugmentConfig
from internimage.train.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
)

__all__ = ["DATASETS", "SETTINGS", "presets"]

#: The ``data.dataset`` values of the task.
DATASETS = ("fashion-mnist-subset", "fashion-mnist", "folder")
#: The class of the task's section of the training config.
SETTINGS = AugmentConfig


def presets() -> dict[str, TrainConfig]:
    """The task's named starting points for ``internimage train --preset``."""
    return {
        # The project's quick job: InternImage-atto's widths with one block per stage (three in the
        # third: a (1, 1, 3, 1) stack, 0.54M parameters), on the bundled Fashion-MNIST subset
        # upsampled to 64 px. The stem divides by 4, so 64 px gives 16x16 maps in the first stage
        # (32 px would leave 2x2 and 1x1 maps for the last two stages, which learns markedly worse
        # for the same time). Light augmentation: the images are centred and upright, so padded
        # crops and flips only; no mixing or photometric changes. Sized to finish within 10 minutes
        # on the slower of the 2-core hosts seen (AMD EPYC Zen 3, no AVX-512, two worker processes):
        # 11 epochs gave 90.80% test top-1 in 9.0 minutes there. The earlier (2, 2, 6, 2) stack
        # reached 91.05% but took 14.6 minutes on that host (8.3 on a Zen 4 host); 48 px took 10.6
        # minutes for 89.95%. Runs that differ only in float rounding (thread counts, kernel
        # versions) land within about +-0.2 points of each other.
        "fashion-mnist": TrainConfig(
            model=ModelConfig(name="internimage_atto", drop_path_rate=0.0, depths=(1, 1, 3, 1)),
            data=DataConfig(
                dataset="fashion-mnist-subset", image_size=64, num_workers=0,
                mean=(0.286, 0.286, 0.286), std=(0.353, 0.353, 0.353),
            ),
            augment=AugmentConfig(
                random_resized_crop=False, crop_padding=2, hflip=0.5, randaugment_ops=0,
                random_erasing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.1,
            ),
            optim=OptimConfig(lr=1.2e-2, weight_decay=0.05, clip_grad=5.0),
            schedule=ScheduleConfig(epochs=11, warmup_epochs=0.5, warmup_lr=1e-5, min_lr=1e-5),
            batch_size=128,
            ema_decay=None,
            processes="auto",
            log_every=20,
        ),
        # The upstream ImageNet-1K from-scratch recipe for InternImage-T (set data.root).
        "imagenet-1k": TrainConfig(),
    }
