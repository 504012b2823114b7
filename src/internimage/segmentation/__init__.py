"""Semantic segmentation with InternImage backbones: UperNet through transformers.

Needs the ``seg`` extra (``pip install internimage[seg]``); ``import internimage`` does not.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Module -> the public names it defines, imported on first use: the task's settings
# (internimage.segmentation.settings) load without transformers, as the training config needs them.
_MODULES = {
    "internimage.segmentation.evaluate": ("test_settings",),
    "internimage.segmentation.inference": (
        "SegmentationInference", "predict_batch", "predict_logits", "predict_mask",
    ),
    "internimage.segmentation.loading": ("LoadedSegmenter", "load_segmenter"),
    "internimage.segmentation.mask2former": (
        "convert_mask2former_state_dict", "mask2former_config", "mask2former_from_mmseg",
        "mask2former_from_mmseg_config", "mask2former_semantic_logits",
    ),
    "internimage.segmentation.metrics": ("SegmentationEvaluator",),
    "internimage.segmentation.pretrained": (
        "create_segmentation_model", "find_segmentation_release", "mask2former_for_release",
        "upernet_for_release", "upernet_model_config",
    ),
    "internimage.segmentation.upernet": (
        "convert_mmseg_state_dict", "from_mmseg", "upernet_config", "upernet_from_mmseg_config",
    ),
    "internimage.segmentation.settings": ("SegmentationConfig",),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "LoadedSegmenter",
    "SegmentationConfig",
    "SegmentationEvaluator",
    "SegmentationInference",
    "convert_mask2former_state_dict",
    "convert_mmseg_state_dict",
    "create_segmentation_model",
    "find_segmentation_release",
    "from_mmseg",
    "load_segmenter",
    "mask2former_config",
    "mask2former_for_release",
    "mask2former_from_mmseg",
    "mask2former_from_mmseg_config",
    "mask2former_semantic_logits",
    "predict_batch",
    "predict_logits",
    "predict_mask",
    "test_settings",
    "upernet_config",
    "upernet_for_release",
    "upernet_from_mmseg_config",
    "upernet_model_config",
]

if TYPE_CHECKING:
    from internimage.segmentation.evaluate import test_settings
    from internimage.segmentation.inference import (
        SegmentationInference,
        predict_batch,
        predict_logits,
        predict_mask,
    )
    from internimage.segmentation.loading import (
        LoadedSegmenter,
        load_segmenter,
    )
    from internimage.segmentation.mask2former import (
        convert_mask2former_state_dict,
        mask2former_config,
        mask2former_from_mmseg,
        mask2former_from_mmseg_config,
        mask2former_semantic_logits,
    )
    from internimage.segmentation.metrics import SegmentationEvaluator
    from internimage.segmentation.pretrained import (
        create_segmentation_model,
        find_segmentation_release,
        mask2former_for_release,
        upernet_for_release,
        upernet_model_config,
    )
    from internimage.segmentation.settings import SegmentationConfig
    from internimage.segmentation.upernet import (
        convert_mmseg_state_dict,
        from_mmseg,
        upernet_config,
        upernet_from_mmseg_config,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
