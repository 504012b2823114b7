"""Training augmentation on batches, on the training device (kornia), plus mixup/cutmix targets."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from internimage.errors import ConfigError

__all__ = [
    "AugmentConfig",
    "MixupCutmix",
    "TrainAugmentation",
    "smooth_one_hot",
    "soft_target_cross_entropy",
]


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation. Defaults follow the upstream ImageNet-1K from-scratch recipe.

    Attributes:
        random_resized_crop: Random resized crop to the image size (else a plain random crop).
        crop_scale_min: Smallest crop area fraction of the random resized crop.
        crop_padding: Zero padding (pixels) around the image before the plain random crop; 0 and
            no random resized crop means no cropping at all.
        hflip: Probability of a horizontal flip.
        randaugment_ops: Operations RandAugment applies per batch; 0 disables it.
        randaugment_magnitude: Magnitude on the usual 0..10 scale (upstream: 9), mapped to kornia's
            0..30 scale. (kornia has no per-op magnitude noise, so upstream's mstd 0.5 is not
            reproduced.)
        random_erasing: Probability of erasing a random rectangle (filled with the mean colour,
            i.e. zero after normalisation).
        mixup_alpha: Beta(alpha, alpha) parameter of mixup; 0 disables mixup.
        cutmix_alpha: Beta(alpha, alpha) parameter of cutmix; 0 disables cutmix.
        mixup_prob: Probability of mixing a batch at all.
        mixup_switch_prob: Probability of cutmix instead of mixup when both are enabled.
        label_smoothing: Label smoothing of the (mixed) targets.
    """

    random_resized_crop: bool = True
    crop_scale_min: float = 0.08
    crop_padding: int = 0
    hflip: float = 0.5
    randaugment_ops: int = 2
    randaugment_magnitude: float = 9.0
    random_erasing: float = 0.25
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        for name in ("hflip", "random_erasing", "mixup_prob", "mixup_switch_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"augment.{name} is a probability in [0, 1], got {value}")
        if not 0.0 < self.crop_scale_min <= 1.0:
            raise ConfigError(
                f"augment.crop_scale_min must be in (0, 1], got {self.crop_scale_min}"
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(
                f"augment.label_smoothing must be in [0, 1), got {self.label_smoothing}"
            )
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ConfigError("augment.mixup_alpha and augment.cutmix_alpha must be >= 0")
        if self.crop_padding < 0 or self.randaugment_ops < 0:
            raise ConfigError("augment.crop_padding and augment.randaugment_ops must be >= 0")
        if self.randaugment_ops and not 0.0 < self.randaugment_magnitude < 10.0:
            raise ConfigError(
                "augment.randaugment_magnitude must be in (0, 10), got "
                f"{self.randaugment_magnitude}"
            )

    @property
    def mixes(self) -> bool:
        """Whether mixup or cutmix is active."""
        return self.mixup_prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


class TrainAugmentation(nn.Module):
    """Geometric and photometric augmentation of float ``[B, 3, H, W]`` images in [0, 1].

    Runs batched on the images' device; randomness comes from the global torch generator, so
    ``torch.manual_seed`` makes it repeatable. Random erasing is left to :meth:`erase`, which the
    caller applies after normalisation.

    Args:
        config: What to apply.
        image_size: Output side in pixels.
    """

    def __init__(self, config: AugmentConfig, image_size: int) -> None:
        super().__init__()
        import kornia.augmentation as K
        from kornia.augmentation.auto import RandAugment

        steps: list[nn.Module] = []
        if config.random_resized_crop:
            steps.append(
                K.RandomResizedCrop(
                    (image_size, image_size), scale=(config.crop_scale_min, 1.0),
                    resample="BICUBIC", align_corners=False,
                )
            )
        elif config.crop_padding > 0:
            steps.append(K.RandomCrop((image_size, image_size), padding=config.crop_padding))
        if config.hflip > 0:
            steps.append(K.RandomHorizontalFlip(p=config.hflip))
        if config.randaugment_ops > 0:
            # kornia's magnitude scale is 0..30 where the usual one is 0..10.
            magnitude = max(1, min(29, round(config.randaugment_magnitude * 3)))
            steps.append(RandAugment(n=config.randaugment_ops, m=magnitude))
        self.pipeline = K.AugmentationSequential(*steps) if steps else nn.Identity()
        self.eraser = (
            K.RandomErasing(p=config.random_erasing, value=0.0)
            if config.random_erasing > 0 else nn.Identity()
        )
        self.image_size = image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Augmented ``[B, 3, image_size, image_size]`` in [0, 1]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")
        if images.shape[0] == 0:
            return images
        out = self.pipeline(images)
        return out.clamp_(0.0, 1.0)

    def erase(self, normalized: torch.Tensor) -> torch.Tensor:
        """Random erasing on normalised images (the erased area becomes the mean colour)."""
        if normalized.shape[0] == 0:
            return normalized
        return self.eraser(normalized)


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot ``[B, num_classes]`` targets with ``smoothing`` spread evenly over all classes."""
    off = smoothing / num_classes
    targets = torch.full(
        (labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device
    )
    return targets.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


class MixupCutmix:
    """Batch-level mixup / cutmix with label smoothing, returning soft targets.

    One mixing coefficient per batch drawn from Beta(alpha, alpha); each image is mixed with the
    image at the mirrored position of the batch (``flip(0)``). kornia's mixup draws its coefficient
    uniformly instead of from a Beta distribution, hence this small implementation.

    Args:
        config: Mixing settings (``mixup_*``, ``cutmix_alpha``, ``label_smoothing``).
        num_classes: Number of classes of the targets.
    """

    def __init__(self, config: AugmentConfig, num_classes: int) -> None:
        self.config = config
        self.num_classes = num_classes

    def _beta(self, alpha: float) -> float:
        a = torch.tensor(float(alpha))
        return float(torch.distributions.Beta(a, a).sample())

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix ``images [B, 3, H, W]``; returns ``(images, targets [B, num_classes])``.

        The targets of every row sum to 1.
        """
        cfg = self.config
        targets = smooth_one_hot(labels, self.num_classes, cfg.label_smoothing)
        if not cfg.mixes or images.shape[0] < 2:
            return images, targets
        if float(torch.rand(())) >= cfg.mixup_prob:
            return images, targets
        use_cutmix = cfg.cutmix_alpha > 0 and (
            cfg.mixup_alpha == 0 or float(torch.rand(())) < cfg.mixup_switch_prob
        )
        partner = images.flip(0)
        if use_cutmix:
            lam = self._beta(cfg.cutmix_alpha)
            height, width = images.shape[-2:]
            cut = math.sqrt(1.0 - lam)
            cut_h, cut_w = int(height * cut), int(width * cut)
            cy = int(torch.randint(height, ()))
            cx = int(torch.randint(width, ()))
            y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
            x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
            images = images.clone()
            images[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
            # The box may be clipped at the border: the weight is the area actually kept.
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)
        else:
            lam = self._beta(cfg.mixup_alpha)
            images = images * lam + partner * (1.0 - lam)
        targets = targets * lam + targets.flip(0) * (1.0 - lam)
        return images, targets


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum(targets * log_softmax(logits))``."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
