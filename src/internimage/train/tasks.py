"""What a training run optimises and measures: the tasks that plug into the one training loop.

The :class:`~internimage.train.trainer.Trainer` owns *how* to optimise (devices, processes,
precision, accumulation, schedules, EMA, checkpoints, logs); a :class:`Task` owns *what*: the
datasets and their batching, the model, the augmentation, the losses of a batch, the evaluation
with the metric that decides ``best.pt``, and what a checkpoint must record for inference. The
loop never asks which task it runs.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from internimage.errors import ConfigError, MissingDependencyError
from internimage.train.config import TASK_PACKAGES, DataConfig, ModelConfig, TrainConfig

__all__ = [
    "TASKS",
    "Task",
    "create_task",
    "groups_with_heads",
    "import_task",
    "limit_sets",
    "load_task_checkpoint",
    "prepare_backbone",
    "without_starting_weights",
]

#: ``(images, targets)`` as the task's collate function makes them.
Batch = tuple[torch.Tensor, torch.Tensor]
Autocast = Callable[[], AbstractContextManager[Any]]


class Task:
    """Base of the tasks; subclasses fill in every method.

    Attributes:
        name: Value of ``TrainConfig.task`` that selects the task.
        main_metric: Key of :meth:`evaluate`'s result that decides ``best.pt`` (higher is
            better).
        curve_metrics: ``(key, label)`` of the evaluation metrics drawn in ``curves.png``.
        curve_label: Axis label of those metrics.
    """

    name: ClassVar[str] = ""
    main_metric: ClassVar[str] = ""
    curve_metrics: ClassVar[tuple[tuple[str, str], ...]] = ()
    curve_label: ClassVar[str] = ""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.classes: tuple[str, ...] = ()

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """Training and validation sets; sets :attr:`classes`."""
        raise NotImplementedError

    def build_validation_set(self) -> Dataset:
        """Only the validation set, for evaluation (sets :attr:`classes`); tasks whose training
        set is costly to open override this."""
        return self.build_datasets()[1]

    def collate(self, batch: list[Any]) -> Batch:
        """The DataLoader's ``collate_fn``: items to one ``(images, targets)`` batch (items of
        unreadable files are ``None`` and left out)."""
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        """The network for :attr:`classes` (fine-tuning weights loaded)."""
        raise NotImplementedError

    def setup(self, device: torch.device) -> None:
        """Build the training augmentation on ``device`` (after the model, before training)."""
        raise NotImplementedError

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Optimiser groups of ``model`` (unwrapped): no weight decay on 1-D parameters and
        biases, layer-wise learning-rate scales (``lr_scale``) from ``optim.layer_decay``."""
        optim = self.config.optim
        return model.param_groups(optim.weight_decay, layer_decay=optim.layer_decay)

    def training_losses(
        self, model: nn.Module, batch: Batch, device: torch.device, autocast: Autocast
    ) -> dict[str, torch.Tensor]:
        """The losses of one micro-batch; ``"loss"`` is the one to minimise."""
        raise NotImplementedError

    def evaluate(
        self,
        model: nn.Module,
        loader: Iterable[Batch],
        device: torch.device,
        amp_dtype: torch.dtype | None,
    ) -> dict[str, float]:
        """Metrics of ``model`` on the whole of ``loader`` (summed across processes), with
        :attr:`main_metric` among them."""
        raise NotImplementedError

    def describe(self, metrics: dict[str, float]) -> str:
        """One phrase for a progress line, e.g. ``top-1 91.20% top-5 99.80%``."""
        raise NotImplementedError

    def checkpoint_metadata(self) -> dict[str, Any]:
        """What inference needs besides the weights (classes, preprocessing)."""
        raise NotImplementedError


def without_starting_weights(config: TrainConfig) -> TrainConfig:
    """``config`` with neither ``model.pretrained`` nor ``model.finetune``: for building a model
    whose every weight comes from a checkpoint next (resuming, inference), so that the starting
    weights are neither fetched nor needed any more."""
    return dataclasses.replace(
        config, model=dataclasses.replace(config.model, pretrained=False, finetune=None)
    )


def prepare_backbone(features: nn.Module, settings: ModelConfig) -> None:
    """Give a dense model's backbone (``InternImageFeatures``) its starting weights
    (``model.pretrained``: the released classifier's stem and stages; ``model.finetune``: those
    of a checkpoint, see ``load_backbone_weights``) and gradient checkpointing."""
    from internimage.models.checkpoint import load_backbone_weights
    from internimage.models.pretrained import resolve_pretrained

    if settings.pretrained:
        load_backbone_weights(features, resolve_pretrained(settings.name, True))
    elif settings.finetune is not None:
        load_backbone_weights(features, settings.finetune)
    if settings.grad_checkpointing:
        features.set_grad_checkpointing(True)


def limit_sets(data: DataConfig, train_set: Dataset, val_set: Dataset) -> tuple[Dataset, Dataset]:
    """The first ``data.train_limit`` / ``data.val_limit`` items of the sets (all when None)."""
    if data.train_limit is not None:
        train_set = Subset(train_set, range(min(data.train_limit, len(train_set))))
    if data.val_limit is not None:
        val_set = Subset(val_set, range(min(data.val_limit, len(val_set))))
    return train_set, val_set


def load_task_checkpoint(
    path: str | Path, task_name: str, *, use_ema: bool = False
) -> tuple[Task, nn.Module, dict[str, Any]]:
    """The task and model of one of this library's training checkpoints, for inference.

    The model gets the checkpoint's weights (strictly), is left on the CPU in training mode,
    and is built without its starting weights (they are in the checkpoint).

    Args:
        path: The ``last.pt``/``best.pt`` file.
        task_name: The task it must be (``"segmentation"``, ``"detection"``).
        use_ema: Take the EMA weights.

    Returns:
        ``(task, model, payload)``; ``task.classes`` is set, ``payload`` is the whole file.

    Raises:
        UsageError: Not a checkpoint of that task, or no EMA weights in it.
    """
    from internimage.errors import UsageError
    from internimage.models.checkpoint import read_checkpoint
    from internimage.train.checkpoint import CHECKPOINT_FORMAT
    from internimage.train.config import config_from_dict

    path = Path(path)
    payload = dict(read_checkpoint(path))
    if payload.get("format") != CHECKPOINT_FORMAT or payload.get("task") != task_name:
        raise UsageError(f"{path} is not a {task_name} training checkpoint of this library")
    if use_ema:
        if payload.get("ema") is None:
            raise UsageError(f"{path} holds no EMA weights (trained with ema_decay=none)")
        weights = payload["ema"]["module"]
    else:
        weights = payload["model"]
    task = create_task(without_starting_weights(config_from_dict(payload["config"])))
    task.classes = tuple(payload["classes"])
    model = task.build_model()
    model.load_state_dict(weights, strict=True)
    return task, model, payload


def groups_with_heads(
    model: nn.Module,
    backbone: nn.Module,
    weight_decay: float,
    *,
    layer_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Optimiser groups of a dense model: the backbone's own (``backbone.param_groups``, with
    layer-wise decay as upstream computes it), then every other parameter of ``model`` (necks,
    heads) at the top learning rate, without weight decay on 1-D parameters and biases. Frozen
    parameters are left out; empty groups are dropped."""
    groups = backbone.param_groups(weight_decay, layer_decay=layer_decay)
    in_backbone = {id(p) for p in backbone.parameters()}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if id(param) in in_backbone or not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    groups.append({"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0})
    groups.append({"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0})
    return [group for group in groups if group["params"]]


#: ``TrainConfig.task`` -> the task class; each task's ``<package>.task`` module adds its own when
#: imported (:func:`import_task`).
TASKS: dict[str, type[Task]] = {}


# Task -> (the extra it needs; the packages that extra brings). Classification needs none.
_EXTRAS = {"segmentation": ("seg", ("transformers",)),
           "detection": ("det", ("torchvision", "pycocotools"))}


def import_task(name: str) -> None:
    """Import the module of a task (``internimage.<task>.task``), which registers it in
    :data:`TASKS`. Segmentation needs the ``seg`` extra (transformers), detection the ``det``
    extra (torchvision and pycocotools).

    Raises:
        MissingDependencyError: A package of its extra is not installed (the message says
            which ``pip install`` brings it).
    """
    try:
        importlib.import_module(f"{TASK_PACKAGES[name]}.task")
    except ModuleNotFoundError as error:
        if name not in _EXTRAS:
            raise
        extra, packages = _EXTRAS[name]
        if error.name is None or error.name.split(".")[0] not in packages:
            raise
        raise MissingDependencyError(
            f"task {name!r} needs {' and '.join(packages)}: pip install internimage[{extra}]"
        ) from error


def create_task(config: TrainConfig) -> Task:
    """The task of ``config.task``.

    Raises:
        ConfigError: Unknown task (or its extra is not installed).
    """
    if config.task not in TASKS and config.task in TASK_PACKAGES:
        import_task(config.task)
    if config.task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASK_PACKAGES)}, got {config.task!r}")
    return TASKS[config.task](config)
