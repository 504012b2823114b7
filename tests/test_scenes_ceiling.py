"""``benchmarks/scenes_ceiling.py``: the oracle-mask mIoU against hand computations."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest

from internimage.data.scenes import SCENE_CLASSES, Scene, SceneInstance, generate_scene
from script_loading import load_benchmark


@pytest.fixture(scope="module")
def ceiling() -> ModuleType:
    """The script loaded as a module."""
    return load_benchmark("scenes_ceiling.py")


def _instance(category: int, mask: np.ndarray) -> SceneInstance:
    return SceneInstance(category=category, mask=mask, box=(0, 0, 1, 1), source_index=0,
                         placement=(0, 0, 1), color=(0, 0, 0))


def test_oracle_miou_by_hand(ceiling: ModuleType) -> None:
    # A 4 x 4 scene: 10 background pixels, a 4-pixel item of class 0 named right, a 2-pixel
    # item of class 1 named class 0.
    first = np.zeros((4, 4), bool)
    first[0, :] = True
    second = np.zeros((4, 4), bool)
    second[1, :2] = True
    scene = Scene(image=np.zeros((4, 4, 3), np.uint8),
                  instances=(_instance(0, first), _instance(1, second)),
                  split="validation", source_split="test", background=(0, 0, 0))
    result = ceiling.oracle_miou([scene], np.array([0, 0]), len(SCENE_CLASSES))
    # Background 10/10; class 0: 4 right of 6 predicted and 4 labelled -> 4/6; class 1: 0 of
    # 2. The other eight classes appear nowhere and are left out of the mean.
    assert result["IoU"][:3] == [100.0, round(400 / 6, 2), 0.0]
    assert all(np.isnan(value) for value in result["IoU"][3:])
    assert result["mIoU"] == pytest.approx((100.0 + 400 / 6 + 0.0) / 3)


def test_oracle_miou_of_right_names_is_perfect(ceiling: ModuleType) -> None:
    scenes = [generate_scene("validation", i, seed=0, size=128) for i in range(3)]
    truth = np.array([inst.category for scene in scenes for inst in scene.instances])
    assert ceiling.oracle_miou(scenes, truth, len(SCENE_CLASSES))["mIoU"] == 100.0
    # One wrong name costs that item's pixels in two classes.
    wrong = truth.copy()
    wrong[0] = (truth[0] + 1) % 10
    assert ceiling.oracle_miou(scenes, wrong, len(SCENE_CLASSES))["mIoU"] < 100.0
