"""Training configuration: frozen dataclasses, presets, dotted overrides and (de)serialisation.

:class:`TrainConfig` is the training loop's config. It composes the settings every run has
(model, data, optimiser, schedule) with one section per task (``augment``, ``segmentation``,
``detection``), whose classes live with their tasks, like the tasks' datasets and presets: in
``internimage.<task>.settings`` (:func:`task_settings`). They are imported when first needed,
not when this module loads: the task packages import this one.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from internimage.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from internimage.errors import ConfigError, ConfigKeyError, MissingDependencyError

if TYPE_CHECKING:
    from internimage.classification.augment import AugmentConfig
    from internimage.detection.settings import DetectionConfig
    from internimage.segmentation.settings import SegmentationConfig

__all__ = [
    "PRESETS",
    "TASK_PACKAGES",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "all_datasets",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config_file",
    "parse_overrides",
    "save_config",
    "task_settings",
]

#: ``TrainConfig.task`` -> the package of the task. Its ``settings`` module holds ``SETTINGS`` (the
#: class of the task's section of TrainConfig), ``DATASETS`` (its ``data.dataset`` values) and
#: ``presets()``; its ``task`` module registers the task's class (``internimage.train.tasks``).
TASK_PACKAGES = {
    "classification": "internimage.classification",
    "segmentation": "internimage.segmentation",
    "detection": "internimage.detection",
}
_DECAYS = ("cosine", "poly", "step")
_AMP = ("auto", "none", "bf16", "fp16")
_STRATEGIES = ("ddp", "fsdp")


def task_settings(task: str) -> types.ModuleType:
    """The settings module of ``task`` (``internimage.<task>.settings``, see
    :data:`TASK_PACKAGES`)."""
    return importlib.import_module(f"{TASK_PACKAGES[task]}.settings")


@cache
def all_datasets() -> tuple[str, ...]:
    """The ``data.dataset`` values of every task, each once, in the tasks' order."""
    names: list[str] = []
    for task in TASK_PACKAGES:
        names.extend(task_settings(task).DATASETS)
    return tuple(dict.fromkeys(names))


def _section_types() -> dict[str, type]:
    """The classes of the tasks' sections by name, to resolve :class:`TrainConfig`'s
    annotations."""
    classes = (task_settings(task).SETTINGS for task in TASK_PACKAGES)
    return {cls.__name__: cls for cls in classes}


def _default_section(task: str) -> typing.Callable[[], Any]:
    """The default of ``task``'s section of :class:`TrainConfig`: its settings' defaults."""
    return lambda: task_settings(task).SETTINGS()


@dataclass(frozen=True)
class ModelConfig:
    """The network: which variant and how to initialise it.

    Attributes:
        name: Registered model name (``internimage.create_model``).
        pretrained: Start from the released weights of ``name``.
        finetune: Checkpoint to start from. Classification: the whole model (its classifier
            head is replaced when the class count differs). Dense tasks: its stem and stages,
            from a classifier or a dense model with the same backbone (see
            ``internimage.models.checkpoint.load_backbone_weights``). Upstream files and this
            library's checkpoints both work.
        drop_path_rate: Stochastic depth rate of the last block (linear from 0).
        grad_checkpointing: Recompute activations in the backward pass to save memory.
        channels: Architecture override: first-stage width (None: the variant's).
        depths: Architecture override: blocks per stage (None: the variant's).
        groups: Architecture override: DCNv3 groups per stage (None: the variant's).
        layer_scale: Architecture override: initial layer scale (None: the variant's; the
            dense configs of InternImage-T use 1.0 where its classifier has none).
        dcn_weights: Ablation: ``shared`` or ``unshared`` DCNv3 output projection (None: the
            variant's, shared).
        dcn_groups: Ablation: one DCNv3 group count for every stage (None: ``groups``).
        mask_normalization: Ablation: ``softmax`` or ``sigmoid`` point weights (None: the
            variant's, softmax).
    """

    name: str = "internimage_t"
    pretrained: bool = False
    finetune: str | None = None
    drop_path_rate: float = 0.1
    grad_checkpointing: bool = False
    channels: int | None = None
    depths: tuple[int, int, int, int] | None = None
    groups: tuple[int, int, int, int] | None = None
    layer_scale: float | None = None
    dcn_weights: str | None = None
    dcn_groups: int | None = None
    mask_normalization: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError(
                f"model.drop_path_rate must be in [0, 1), got {self.drop_path_rate}"
            )
        if self.pretrained and self.finetune is not None:
            raise ConfigError(
                "model.pretrained and model.finetune both choose the starting weights; set one"
            )
        from internimage.models import VARIANTS

        if self.name not in VARIANTS:
            raise ConfigError(
                f"model.name {self.name!r} is not a model; available: {', '.join(VARIANTS)}"
            )
        try:
            # The architecture's own checks (widths divisible by groups, four stages, ...).
            VARIANTS[self.name].config.replace(**self.architecture_overrides())
        except ValueError as error:
            raise ConfigError(f"model settings do not fit {self.name}: {error}") from None

    def architecture_overrides(self) -> dict[str, object]:
        """The set architecture fields, as ``create_model`` keyword arguments."""
        fields = {"channels": self.channels, "depths": self.depths, "groups": self.groups,
                  "layer_scale": self.layer_scale, "dcn_weights": self.dcn_weights,
                  "dcn_groups": self.dcn_groups, "mask_normalization": self.mask_normalization}
        return {k: v for k, v in fields.items() if v is not None}

    def ablations(self) -> list[str]:
        """Names of the set ablation fields (``dcn_weights``, ``dcn_groups``,
        ``mask_normalization``)."""
        return [name for name in ("dcn_weights", "dcn_groups", "mask_normalization")
                if getattr(self, name) is not None]


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are shaped.

    Attributes:
        dataset: Classification: ``fashion-mnist-subset`` (bundled), ``fashion-mnist`` (full
            IDX files under ``root`` or the system location) or ``folder``
            (``root/<train_split>/<class>/...`` and ``root/<val_split>/<class>/...``).
            Segmentation: ``fashion-mnist-scenes`` (generated from the bundled subset into
            ``root``, default ``~/.cache/internimage/fashion-mnist-scenes``), ``ade20k``
            (``root/ADEChallengeData2016``) or ``segmentation-folder``
            (``root/images/<split>/``, ``root/masks/<split>/`` paired by file stem, class names
            in ``root/classes.txt``). Detection: ``fashion-mnist-scenes`` (the same scenes as
            COCO instances) or ``coco`` (images in ``root/<split>/``, annotations in
            ``root/annotations/instances_<split>.json``; the COCO presets set the splits to
            ``train2017`` and ``val2017``).
        root: Dataset folder (see ``dataset``).
        train_split: Training sub-folder of a ``folder`` or ``segmentation-folder`` dataset.
        val_split: Validation sub-folder of a ``folder`` or ``segmentation-folder`` dataset.
        image_size: Side of the square network input (segmentation: of the training crop).
        crop_fraction: Evaluation centre-crop fraction (1.0 = upstream).
        interpolation: Evaluation resampling filter.
        mean: Normalisation mean (RGB, [0, 1] units).
        std: Normalisation standard deviation.
        num_workers: DataLoader worker processes per training process.
        train_limit: Use only the first N training images (quick runs); None = all.
        val_limit: Use only the first N validation images; None = all.
        scenes_train: Training scenes of ``fashion-mnist-scenes``.
        scenes_val: Validation scenes of ``fashion-mnist-scenes``.
        scene_size: Side of the generated scenes.
        scenes_seed: Seed of the generated scenes.
    """

    dataset: str = "folder"
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    image_size: int = 224
    crop_fraction: float = 1.0
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_workers: int = 4
    train_limit: int | None = None
    val_limit: int | None = None
    scenes_train: int = 2000
    scenes_val: int = 200
    scene_size: int = 128
    scenes_seed: int = 0

    def __post_init__(self) -> None:
        datasets = all_datasets()
        if self.dataset not in datasets:
            raise ConfigError(f"data.dataset must be one of {datasets}, got {self.dataset!r}")
        if self.dataset == "folder" and self.root is None:
            # Checked at use, not here, so a preset can be built before the root is set.
            pass
        if self.image_size < 8:
            raise ConfigError(f"data.image_size must be at least 8, got {self.image_size}")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ConfigError(f"data.crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("data.mean and data.std need three values, std positive")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")
        for name in ("train_limit", "val_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"data.{name} must be positive or None, got {value}")
        if self.scenes_train < 1 or self.scenes_val < 1 or self.scene_size < 32:
            raise ConfigError("data.scenes_train and scenes_val must be >= 1, scene_size >= 32")
        if self.scenes_seed < 0:
            raise ConfigError(f"data.scenes_seed must be >= 0, got {self.scenes_seed}")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW settings.

    Attributes:
        lr: Peak learning rate per 512 images; the used value is ``lr * total_batch / 512``.
        weight_decay: Decoupled weight decay (never on 1-D parameters and biases).
        betas: Adam betas.
        eps: Adam epsilon.
        layer_decay: Layer-wise lr decay factor (e.g. 0.9); None disables it.
        clip_grad: Max global gradient norm; None disables clipping.
    """

    lr: float = 5e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    layer_decay: float | None = None
    clip_grad: float | None = 5.0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or self.eps <= 0:
            raise ConfigError("optim.lr and optim.eps must be positive, optim.weight_decay >= 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas must be two values in [0, 1), got {self.betas}")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"optim.layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ConfigError(f"optim.clip_grad must be positive or None, got {self.clip_grad}")


@dataclass(frozen=True)
class ScheduleConfig:
    """Per-step learning-rate schedule: linear warm-up, then cosine, polynomial or step decay.

    A run is counted in epochs, or in optimiser steps when ``steps`` is set (ADE20K's 160k
    iterations): then it trains as many epochs as those steps need and stops at the last step.

    Attributes:
        epochs: Training epochs (ignored when ``steps`` is set).
        warmup_epochs: Linear warm-up length (fractions allowed).
        warmup_lr: Learning rate at step 0, per 512 images (scaled like ``optim.lr``).
        min_lr: Final learning rate, per 512 images (scaled like ``optim.lr``).
        decay: ``cosine`` (half cosine to ``min_lr``), ``poly`` (mmseg's polynomial decay,
            ``(1 - progress) ** power``) or ``step`` (mmdet's: times ``gamma`` at each of
            ``milestones``).
        power: Power of the polynomial decay.
        milestones: Epochs after which the step decay applies ``gamma`` (mmdet 1x: 8, 11).
        gamma: Factor of each step of the step decay.
        steps: Total optimiser steps; None counts in epochs.
        warmup_steps: Warm-up length in optimiser steps (replaces ``warmup_epochs``).
    """

    epochs: int = 300
    warmup_epochs: float = 20.0
    warmup_lr: float = 5e-7
    min_lr: float = 5e-6
    decay: str = "cosine"
    power: float = 1.0
    steps: int | None = None
    warmup_steps: int | None = None
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.decay not in _DECAYS:
            raise ConfigError(f"schedule.decay must be one of {_DECAYS}, got {self.decay!r}")
        if self.power <= 0:
            raise ConfigError(f"schedule.power must be positive, got {self.power}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"schedule.steps must be >= 1 or None, got {self.steps}")
        if self.warmup_steps is not None and not (
            0 <= self.warmup_steps <= (self.steps if self.steps is not None else self.warmup_steps)
        ):
            raise ConfigError(
                f"schedule.warmup_steps must be in [0, steps], got {self.warmup_steps}"
            )
        if self.epochs < 1:
            raise ConfigError(f"schedule.epochs must be >= 1, got {self.epochs}")
        if not 0.0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(
                f"schedule.warmup_epochs must be in [0, epochs={self.epochs}], "
                f"got {self.warmup_epochs}"
            )
        if self.warmup_lr < 0 or self.min_lr < 0:
            raise ConfigError("schedule.warmup_lr and schedule.min_lr must be >= 0")
        if self.decay == "step" and not self.milestones:
            raise ConfigError("schedule.decay='step' needs schedule.milestones (epochs)")
        if any(m <= 0 for m in self.milestones) or not 0 < self.gamma <= 1:
            raise ConfigError(
                f"schedule.milestones must be positive epochs and gamma in (0, 1], got "
                f"{self.milestones} and {self.gamma}"
            )


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; saved as ``config.json`` in the run folder.

    Attributes:
        task: What is trained: ``classification``, ``segmentation`` or ``detection``
            (:mod:`internimage.train.tasks`).
        model: Network choice.
        data: Dataset and input shaping.
        augment: Training augmentation and target mixing (classification).
        segmentation: Head, labels and augmentation of the segmentation task.
        detection: Heads, sizes, sampling and augmentation of the detection task.
        optim: Optimiser.
        schedule: Learning-rate schedule.
        batch_size: Images per micro-batch of each torchrun process (shared by its local
            ``processes``); the total batch is ``batch_size * torchrun processes * accum_steps``.
        accum_steps: Micro-batches accumulated per optimiser step.
        amp: Mixed precision: ``auto`` (fp16 with loss scaling on CUDA, none on CPU), ``none``,
            ``bf16`` (autocast) or ``fp16`` (autocast + GradScaler; CUDA only).
        ema_decay: Decay of the weight EMA (evaluated too); None disables it.
        ema_warmup: Ramp the EMA decay up as ``min(decay, (1 + step) / (10 + step))`` so short runs
            still get a useful average.
        seed: Seed of weights, data order and augmentation.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        strategy: ``ddp`` or ``fsdp`` when launched with several processes (torchrun).
        processes: Worker processes the run starts on this machine for CPU training, sharing
            each batch of ``batch_size`` images and the cores (the same run; small models can use
            N cores better as N processes than as N threads of one, see
            :mod:`internimage.train.launch` for the measured gain). ``auto``: one per usable CPU
            core, at most one per 32 images; 1 on GPUs and under torchrun.
        output_dir: Parent folder of run folders.
        name: Run folder name; None = a timestamp.
        checkpoint_every: Also write ``last.pt`` every N optimiser steps (0: only at epoch ends).
        eval_every: Evaluate every N epochs (and always after the last).
        log_every: Log the training loss every N optimiser steps.
        progress: Show progress bars (tqdm) when the output is a terminal.
    """

    task: str = "classification"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=_default_section("classification"))
    segmentation: SegmentationConfig = field(default_factory=_default_section("segmentation"))
    detection: DetectionConfig = field(default_factory=_default_section("detection"))
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    batch_size: int = 128
    accum_steps: int = 1
    amp: str = "auto"
    ema_decay: float | None = 0.9999
    ema_warmup: bool = False
    seed: int = 0
    device: str = "auto"
    strategy: str = "ddp"
    processes: int | str = 1
    output_dir: str = "runs"
    name: str | None = None
    checkpoint_every: int = 0
    eval_every: int = 1
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        if self.task not in TASK_PACKAGES:
            raise ConfigError(f"task must be one of {tuple(TASK_PACKAGES)}, got {self.task!r}")
        datasets = task_settings(self.task).DATASETS
        if self.data.dataset not in datasets:
            raise ConfigError(
                f"data.dataset={self.data.dataset!r} is not a {self.task} dataset; choose from "
                f"{', '.join(datasets)}"
            )
        if self.batch_size < 1 or self.accum_steps < 1:
            raise ConfigError("batch_size and accum_steps must be >= 1")
        if self.amp not in _AMP:
            raise ConfigError(f"amp must be one of {_AMP}, got {self.amp!r}")
        if self.strategy not in _STRATEGIES:
            raise ConfigError(f"strategy must be one of {_STRATEGIES}, got {self.strategy!r}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in (0, 1) or None, got {self.ema_decay}")
        if self.processes != "auto":
            if not isinstance(self.processes, int) or isinstance(self.processes, bool) or (
                self.processes < 1
            ):
                raise ConfigError(f"processes must be 'auto' or >= 1, got {self.processes!r}")
            if self.batch_size % self.processes:
                raise ConfigError(
                    f"processes={self.processes} must divide batch_size={self.batch_size}: the "
                    "workers share each batch"
                )
        if self.checkpoint_every < 0 or self.eval_every < 1 or self.log_every < 1:
            raise ConfigError(
                "checkpoint_every >= 0, eval_every >= 1 and log_every >= 1 required"
            )


def __getattr__(name: str) -> Any:
    # PRESETS gathers every task's presets, which need the task packages: built on first use.
    if name == "PRESETS":
        presets: dict[str, TrainConfig] = {}
        for task in TASK_PACKAGES:
            presets.update(task_settings(task).presets())
        globals()["PRESETS"] = presets
        return presets
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    #: Named starting points for ``internimage train --preset``: every task's presets.
    PRESETS: dict[str, TrainConfig]


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, localns=_section_types())


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (parsed JSON or a command-line string) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in options:
                return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except (TypeError, ValueError) as error:
                errors.append(str(error))
        raise ConfigError(f"{key}: cannot convert {value!r} to {tp}: {'; '.join(errors)}")
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            text = value.strip()
            # "[1.5, 3.0]" and "(1.5, 3.0)" are what users type from JSON and Python habit.
            if len(text) >= 2 and (text[0], text[-1]) in (("[", "]"), ("(", ")")):
                text = text[1:-1].strip()
            items = [part.strip() for part in text.split(",")] if text else []
        else:
            items = list(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], key) for v in items)
        if len(items) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, key) for v, a in zip(items, args, strict=True))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected a boolean, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if _is_dataclass_type(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _from_dict(tp, value, key + ".")
    raise TypeError(f"{key}: unsupported field type {tp}")


def _from_dict(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigKeyError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; valid keys under "
            f"{prefix or 'the top level'}: {', '.join(sorted(types_))}"
        )
    kwargs = {name: _convert(v, types_[name], prefix + name) for name, v in values.items()}
    return cls(**kwargs)


def config_from_dict(values: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Build a :class:`TrainConfig` from a (possibly partial) nested mapping.

    Keys missing from ``values`` keep the values of ``base`` (default: the dataclass defaults).

    Raises:
        KeyError: A key that is not a config field.
        ValueError: A value of the wrong type or out of range.
    """
    merged = config_to_dict(base if base is not None else TrainConfig())
    _deep_update(merged, values, "")
    return _from_dict(TrainConfig, merged, "")


def _deep_update(target: dict[str, Any], updates: Mapping[str, Any], prefix: str) -> None:
    for key, value in updates.items():
        if key not in target:
            raise ConfigKeyError(
                f"unknown config key {prefix + key!r}; valid keys under "
                f"{prefix or 'the top level'}: {', '.join(sorted(target))}"
            )
        if isinstance(target[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{prefix + key} is a section; give a mapping, got {value!r}")
            _deep_update(target[key], value, prefix + key + ".")
        else:
            target[key] = value


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples become lists), fit for JSON and checkpoints."""
    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def parse_overrides(assignments: Iterable[str]) -> dict[str, Any]:
    """``["optim.lr=1e-3", "seed=1"]`` -> ``{"optim": {"lr": "1e-3"}, "seed": "1"}``.

    Values stay strings; :func:`config_from_dict` converts them to the fields' types.

    Raises:
        ConfigError: An assignment without ``=``, or one that conflicts with an earlier one.
    """
    updates: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {assignment!r} is not of the form section.key=value")
        node = updates
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {assignment!r} conflicts with an earlier one")
        node[parts[-1]] = raw.strip()
    return updates


def apply_overrides(config: TrainConfig, assignments: Iterable[str]) -> TrainConfig:
    """Apply ``section.key=value`` strings, e.g. ``optim.lr=1e-3`` or ``optim.betas=0.9,0.95``
    (tuples may also be written ``[0.9, 0.95]``).

    Values are converted to the field's type (``none``/``null`` for optional fields).

    Raises:
        ConfigError: An assignment without ``=`` or with a bad value.
        ConfigKeyError: An unknown key.
    """
    return config_from_dict(parse_overrides(assignments), base=config)


def load_config_file(path: str | Path, base: TrainConfig | None = None) -> TrainConfig:
    """Read a JSON (or YAML, when PyYAML is installed) config file on top of ``base``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ModuleNotFoundError as error:
            raise MissingDependencyError(
                f"reading {path} needs PyYAML (pip install pyyaml), or write the config as JSON"
            ) from error
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(
                f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: "
                f"{error.msg})"
            ) from None
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return config_from_dict(values, base=base)


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the config as JSON, atomically."""
    from internimage.files import atomic_write_bytes

    text = json.dumps(config_to_dict(config), indent=2, sort_keys=False) + "\n"
    atomic_write_bytes(Path(path), text.encode("utf-8"))
