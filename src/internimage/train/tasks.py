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

from internimage.data.augment import MixupCutmix, TrainAugmentation, soft_target_cross_entropy
from internimage.data.datasets import ImageFolderDataset, collate_skipping_unreadable
from internimage.data.fashion_mnist import FASHION_MNIST_CLASSES, fashion_mnist_dataset
from internimage.data.transforms import ResizeCenterCrop, normalize, to_float_images
from internimage.errors import CheckpointFileError, ConfigError, MissingDependencyError
from internimage.train.config import DataConfig, ModelConfig, TrainConfig
from internimage.train.evaluate import evaluate

__all__ = [
    "TASKS",
    "ClassificationTask",
    "Task",
    "build_datasets",
    "create_classifier",
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

# Training-time resize of folder images before the on-device random resized crop: a bit larger
# than the network input so crops keep detail (the usual 224 -> 256 ratio).
_TRAIN_LOAD_RATIO = 256 / 224


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


# ------------------------------------------------------------------------------ classification


def build_datasets(data: DataConfig) -> tuple[Dataset, Dataset, tuple[str, ...]]:
    """Training set, validation set and class names of a classification ``data`` config.

    Items are ``(uint8 [C, H, W], label)``; folder images come resized and centre-cropped
    (training: to about 1.14x the input side, validation: the evaluation transform).
    """
    if data.dataset in ("fashion-mnist-subset", "fashion-mnist"):
        train_set: Dataset = fashion_mnist_dataset(data.dataset, "train", data.root)
        val_set: Dataset = fashion_mnist_dataset(data.dataset, "test", data.root)
        classes = FASHION_MNIST_CLASSES
    elif data.dataset == "folder":
        if data.root is None:
            raise ConfigError(
                "data.dataset='folder' needs data.root (the folder with the splits), e.g. "
                "--data-root DIR"
            )
        root = Path(data.root)
        load_size = int(round(data.image_size * _TRAIN_LOAD_RATIO))
        train_set = ImageFolderDataset(
            root / data.train_split, ResizeCenterCrop(load_size, 1.0, "bilinear")
        )
        classes = train_set.classes
        val_set = ImageFolderDataset(
            root / data.val_split,
            ResizeCenterCrop(data.image_size, data.crop_fraction, data.interpolation),
            classes=classes,
        )
    else:
        raise ConfigError(
            f"data.dataset={data.dataset!r} is not a classification dataset; use "
            f"fashion-mnist-subset, fashion-mnist or folder"
        )
    if data.train_limit is not None:
        train_set = torch.utils.data.Subset(train_set, range(min(data.train_limit, len(train_set))))
    if data.val_limit is not None:
        val_set = torch.utils.data.Subset(val_set, range(min(data.val_limit, len(val_set))))
    return train_set, val_set, tuple(classes)


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


#: ``TrainConfig.task`` -> the task class.
TASKS: dict[str, type[Task]] = {ClassificationTask.name: ClassificationTask}


# Task -> (its module, which registers it; the extra; the packages that extra brings).
_EXTRAS = {"segmentation": ("internimage.segmentation.task", "seg", ("transformers",)),
           "detection": ("internimage.detection.task", "det", ("torchvision", "pycocotools"))}


def import_task(name: str) -> None:
    """Import the module of a task that needs an extra (``segmentation``: transformers,
    ``detection``: torchvision and pycocotools), which registers it in :data:`TASKS`.

    Raises:
        MissingDependencyError: A package of its extra is not installed (the message says
            which ``pip install`` brings it).
    """
    module, extra, packages = _EXTRAS[name]
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as error:
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
    if config.task not in TASKS and config.task in _EXTRAS:
        import_task(config.task)
    if config.task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {config.task!r}")
    return TASKS[config.task](config)
