"""InternImage vision backbones with a compiler-free DCNv3 operator for CPU and GPU.

The model API is imported lazily (``internimage.create_model`` etc.) so that ``import internimage``
stays cheap for tools that only need the version.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> module that defines it.
_EXPORTS = {
    "InternImage": "internimage.models",
    "InternImageConfig": "internimage.models",
    "InternImageFeatures": "internimage.models",
    "CheckpointMismatchError": "internimage.models",
    "FlashInternImage": "internimage.models",
    "PRETRAINED": "internimage.models",
    "VARIANTS": "internimage.models",
    "count_macs": "internimage.models",
    "create_model": "internimage.models",
    "export_onnx": "internimage.export",
    "find_release": "internimage.catalog",
    "list_pretrained": "internimage.catalog",
    "verify_checkpoint": "internimage.catalog",
    "list_models": "internimage.models",
    "load_checkpoint": "internimage.models",
    "scaled_config": "internimage.models",
    "stacking_config": "internimage.models",
}

__all__ = [
    "__version__",
    "CheckpointMismatchError",
    "FlashInternImage",
    "InternImage",
    "InternImageConfig",
    "InternImageFeatures",
    "PRETRAINED",
    "VARIANTS",
    "count_macs",
    "create_model",
    "export_onnx",
    "find_release",
    "list_models",
    "list_pretrained",
    "load_checkpoint",
    "scaled_config",
    "stacking_config",
    "verify_checkpoint",
]

if TYPE_CHECKING:
    from internimage.catalog import find_release, list_pretrained, verify_checkpoint
    from internimage.export import export_onnx
    from internimage.models import (
        PRETRAINED,
        VARIANTS,
        CheckpointMismatchError,
        FlashInternImage,
        InternImage,
        InternImageConfig,
        InternImageFeatures,
        count_macs,
        create_model,
        list_models,
        load_checkpoint,
        scaled_config,
        stacking_config,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'internimage' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
