"""Which task a checkpoint given to eval/predict/export belongs to, read as cheaply as possible."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from internimage.cli import evaluate
from internimage.models import checkpoint as checkpoint_module


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_the_task_of_a_training_checkpoint_is_read(tmp_path: Path, task: str) -> None:
    path = tmp_path / "best.pt"
    torch.save({"task": task, "model": {"w": torch.zeros(2)}}, path)
    assert evaluate.source_task(path, None) == task


def test_a_checkpoint_without_a_task_is_a_classifier(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(2)}, path)
    assert evaluate.source_task(path, None) == "classification"


def test_a_safetensors_file_is_not_read_to_learn_its_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the safetensors file was read")

    monkeypatch.setattr(checkpoint_module, "read_checkpoint", refuse)
    assert evaluate.source_task(path, None) == "classification"


@pytest.mark.parametrize(
    ("name", "task"),
    [("upernet_internimage_t_ade20k", "segmentation"),
     ("mask_rcnn_internimage_t_1x_coco", "detection"),
     ("internimage_t", "classification")],
)
def test_released_weights_name_their_task(name: str, task: str) -> None:
    assert evaluate.source_task(None, name) == task
