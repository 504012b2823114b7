"""The training loop and what every task shares: the config, schedules, checkpoints, processes,
EMA, the metrics log and the task registry (the tasks live in their own packages:
:mod:`internimage.classification`, :mod:`internimage.segmentation`, :mod:`internimage.detection`).

``PRESETS`` and the classification names listed in ``__all__`` stay importable from here; they are
imported on first use, as those packages import this one.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from internimage.train.checkpoint import (
    atomic_save,
    atomic_write_bytes,
    capture_rng_state,
    load_training_checkpoint,
    restore_rng_state,
)
from internimage.train.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config_file,
    save_config,
)
from internimage.train.distributed import GlobalBatchNorm2d, ShardedBatchSampler
from internimage.train.ema import ModelEma
from internimage.train.schedule import WarmupCosineSchedule, scaled_lr
from internimage.train.tasks import TASKS, Task
from internimage.train.trainer import RunResult, Trainer

# Name -> the module that defines it, imported on first use.
_LAZY = {
    "PRESETS": "internimage.train.config",
    "ClassificationTask": "internimage.classification.task",
    "build_datasets": "internimage.classification.data",
    "create_classifier": "internimage.classification.task",
    "evaluate": "internimage.classification.evaluate",
}

__all__ = [
    "PRESETS",
    "TASKS",
    "ClassificationTask",
    "DataConfig",
    "GlobalBatchNorm2d",
    "ModelConfig",
    "ModelEma",
    "OptimConfig",
    "RunResult",
    "ScheduleConfig",
    "ShardedBatchSampler",
    "Task",
    "TrainConfig",
    "Trainer",
    "WarmupCosineSchedule",
    "apply_overrides",
    "atomic_save",
    "atomic_write_bytes",
    "build_datasets",
    "capture_rng_state",
    "config_from_dict",
    "config_to_dict",
    "create_classifier",
    "evaluate",
    "load_config_file",
    "load_training_checkpoint",
    "restore_rng_state",
    "save_config",
    "scaled_lr",
]

if TYPE_CHECKING:
    from internimage.classification.data import build_datasets
    from internimage.classification.evaluate import evaluate
    from internimage.classification.task import ClassificationTask, create_classifier
    from internimage.train.config import PRESETS


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
