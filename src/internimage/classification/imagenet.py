"""ImageNet-1K class names (the standard WordNet-sorted order of the 1000 classes)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

__all__ = ["imagenet_classes"]


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1K class names in label order (0 ``tench`` ... 999 ``toilet tissue``).

    Label ``i`` of every released ImageNet-1K classifier is ``imagenet_classes()[i]``.
    """
    text = resources.files("internimage.data").joinpath("assets", "imagenet_classes.txt")
    names = tuple(line.strip() for line in text.read_text(encoding="utf-8").splitlines())
    names = tuple(name for name in names if name)
    if len(names) != 1000:
        raise RuntimeError(f"imagenet_classes.txt holds {len(names)} names instead of 1000")
    return names
