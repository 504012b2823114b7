"""Training and evaluation: the upstream recipe, distributed and resumable."""

from internimage.train.checkpoint import (
    atomic_save,
    atomic_write_bytes,
    capture_rng_state,
    load_training_checkpoint,
    restore_rng_state,
)
from internimage.train.config import (
    PRESETS,
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
from internimage.train.evaluate import evaluate
from internimage.train.schedule import WarmupCosineSchedule, scaled_lr
from internimage.train.tasks import (
    TASKS,
    ClassificationTask,
    Task,
    build_datasets,
    create_classifier,
)
from internimage.train.trainer import RunResult, Trainer

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
