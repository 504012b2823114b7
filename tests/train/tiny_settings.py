"""Tiny training settings shared by the training tests (seconds per run on two cores).

Imported by the test modules of this folder (pytest puts the folder on ``sys.path``)."""

from __future__ import annotations

from command_line import set_args, step_losses
from internimage.train.launch import free_port

__all__ = [
    "NO_AUGMENTATION",
    "PARALLEL_SETTINGS",
    "SGD_LIKE",
    "TINY_SETTINGS",
    "free_port",
    "set_args",
    "step_losses",
]

# A one-block-per-stage network on 32-pixel images, 64 training images in batches of 16:
# 4 optimiser steps per epoch. On the CPU even where a GPU is present: the multi-process tests
# compare CPU workers and gloo runs, and "auto" would put every torchrun rank on a GPU.
TINY_SETTINGS = [
    "device=cpu",
    "model.name=internimage_atto",
    "model.depths=1,1,1,1",
    "model.drop_path_rate=0",
    "data.dataset=fashion-mnist-subset",
    "data.image_size=32",
    "data.train_limit=64",
    "data.val_limit=32",
    "data.num_workers=0",
    "schedule.epochs=2",
    "schedule.warmup_epochs=0.5",
    "optim.lr=4e-3",
    "batch_size=16",
    "log_every=1",
    "progress=false",
]

# No randomness at all: for comparing runs that draw random numbers differently.
NO_AUGMENTATION = [
    "augment.hflip=0",
    "augment.crop_padding=0",
    "augment.random_resized_crop=false",
    "augment.randaugment_ops=0",
    "augment.random_erasing=0",
    "augment.mixup_alpha=0",
    "augment.cutmix_alpha=0",
]


# Adam divides each gradient by its own running magnitude, so a parameter whose exact gradient is
# zero (e.g. a bias that a following BatchNorm cancels) takes full-size steps driven by rounding
# noise, which differs between any two summation orders. With eps = 1 (far above sqrt(v)) the
# update is lr * m, plain momentum SGD, and rounding differences stay rounding-sized, so runs that
# differ only in summation order (several processes against one) can be compared tightly.
SGD_LIKE = ["optim.eps=1.0", "optim.lr=10", "optim.weight_decay=0"]

# Parallel runs are compared with one process training the same global batch of 16.
PARALLEL_SETTINGS = TINY_SETTINGS + NO_AUGMENTATION + SGD_LIKE + ["ema_decay=none"]
