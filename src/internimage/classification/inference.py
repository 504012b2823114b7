"""Classifiers ready for inference from a training checkpoint, weights file or released weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from internimage.classification.imagenet import imagenet_classes
from internimage.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ResizeCenterCrop
from internimage.errors import UsageError
from internimage.models.checkpoint import read_checkpoint
from internimage.train.checkpoint import CHECKPOINT_FORMAT

__all__ = ["LoadedClassifier", "load_classifier"]


@dataclass(frozen=True)
class LoadedClassifier:
    """A model in eval mode with the preprocessing it expects.

    Attributes:
        model: The network on its device.
        classes: Class names in label order.
        image_size: Input side.
        mean: Normalisation mean.
        std: Normalisation std.
        crop_fraction: Evaluation centre-crop fraction.
        interpolation: Evaluation resize filter.
        grayscale: The model was trained on grayscale images (replicated to RGB).
        dataset: Dataset the checkpoint was trained on, if known (its config's ``data.dataset``).
        data_root: Its ``data.root``.
    """

    model: nn.Module
    classes: tuple[str, ...]
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_fraction: float = 1.0
    interpolation: str = "bicubic"
    grayscale: bool = False
    dataset: str | None = None
    data_root: str | None = None

    def transform(self) -> ResizeCenterCrop:
        """Per-image PIL transform to uint8 ``[3, S, S]``."""
        return ResizeCenterCrop(self.image_size, self.crop_fraction, self.interpolation)


def _default_classes(num_classes: int) -> tuple[str, ...]:
    if num_classes == 1000:
        return imagenet_classes()
    return tuple(f"class {i}" for i in range(num_classes))


def load_classifier(
    *,
    checkpoint: str | Path | None = None,
    pretrained: str | None = None,
    model_name: str | None = None,
    use_ema: bool = False,
    device: torch.device | str = "cpu",
    image_size: int | None = None,
) -> LoadedClassifier:
    """Build a classifier from exactly one source.

    Args:
        checkpoint: A training checkpoint of this library (model name, classes and preprocessing
            come from it), or any other weights file (then ``model_name`` is required and
            ImageNet preprocessing is assumed).
        pretrained: Name of a variant with released ImageNet-1K weights, or of a released
            classifier (``internimage list --task classification``).
        model_name: Variant of a plain weights file.
        use_ema: Take the EMA weights of a training checkpoint.
        device: Where to put the model.
        image_size: Override the input side.

    Raises:
        ValueError: Both or neither source given, or missing EMA weights / model name.
    """
    import internimage
    from internimage.models.pretrained import PRETRAINED, classification_weights

    if (checkpoint is None) == (pretrained is None):
        raise UsageError("give exactly one of a checkpoint or a pretrained model name")
    if model_name is not None and model_name not in internimage.VARIANTS:
        raise UsageError(
            f"unknown model {model_name!r}; available: {', '.join(internimage.VARIANTS)}"
        )
    device = torch.device(device)
    if pretrained is not None:
        # A variant's default ImageNet-1K classifier, or any released classifier by name.
        info = PRETRAINED.get(pretrained) or classification_weights(pretrained)
        model = internimage.create_model(pretrained, pretrained=True, num_classes=info.num_classes)
        return LoadedClassifier(
            model=model.to(device).eval(),
            classes=_default_classes(info.num_classes),
            image_size=image_size or info.input_size[-1],
            mean=tuple(info.mean),
            std=tuple(info.std),
            crop_fraction=info.crop_fraction,
            interpolation=info.interpolation,
        )
    path = Path(checkpoint)
    payload = read_checkpoint(path)
    if payload.get("format") == CHECKPOINT_FORMAT:
        classes = tuple(payload["classes"])
        if use_ema:
            if payload.get("ema") is None:
                raise UsageError(
                    f"{path} holds no EMA weights (trained with ema_decay=none); drop --ema"
                )
            weights = payload["ema"]["module"]
        else:
            weights = payload["model"]
        from internimage.train.config import config_from_dict

        stored = config_from_dict(payload["config"])
        name = model_name or payload["model_name"]
        model = internimage.create_model(
            name, num_classes=len(classes), **stored.model.architecture_overrides()
        )
        internimage.load_checkpoint(model, weights, strict=True)
        data = payload["config"].get("data", {})
        dataset = data.get("dataset")
        return LoadedClassifier(
            model=model.to(device).eval(),
            classes=classes,
            image_size=image_size or int(payload["image_size"]),
            mean=tuple(payload["mean"]),
            std=tuple(payload["std"]),
            crop_fraction=float(payload.get("crop_fraction", 1.0)),
            interpolation=str(payload.get("interpolation", "bicubic")),
            grayscale=dataset in ("fashion-mnist", "fashion-mnist-subset"),
            dataset=dataset,
            data_root=data.get("root"),
        )
    if use_ema:
        raise UsageError(f"{path} is not a training checkpoint; it has no EMA weights")
    if model_name is None:
        raise UsageError(
            f"{path} is a plain weights file; say which model it is (--model NAME)"
        )
    from internimage.models.checkpoint import extract_state_dict

    weights = extract_state_dict(payload)
    head = weights.get("head.weight")
    num_classes = int(head.shape[0]) if head is not None else 1000
    model = internimage.create_model(model_name, num_classes=num_classes)
    internimage.load_checkpoint(model, weights, strict=True)
    info = PRETRAINED.get(model_name)
    return LoadedClassifier(
        model=model.to(device).eval(),
        classes=_default_classes(num_classes),
        image_size=image_size or (info.input_size[-1] if info else 224),
        mean=tuple(info.mean) if info else IMAGENET_MEAN,
        std=tuple(info.std) if info else IMAGENET_STD,
        crop_fraction=info.crop_fraction if info else 1.0,
        interpolation=info.interpolation if info else "bicubic",
    )
