"""Checkpoint files are read by what they hold, not by their name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import internimage
from internimage.errors import CheckpointFileError
from internimage.models import load_checkpoint, read_checkpoint
from internimage.models.checkpoint import safetensors_header


@pytest.mark.parametrize("name", ["weights.pth", "weights.SAFETENSORS", "weights"])
def test_a_safetensors_file_loads_under_any_name(tmp_path: Path, name: str) -> None:
    source = internimage.create_model("internimage_atto", num_classes=3)
    path = tmp_path / name
    save_file(source.state_dict(), str(path))
    header = safetensors_header(path)
    assert header is not None and header["head.weight"]["shape"] == [3, 192]
    model = internimage.create_model("internimage_atto", num_classes=3)
    load_checkpoint(model, path)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())


def test_a_torch_file_named_safetensors_loads(tmp_path: Path) -> None:
    source = internimage.create_model("internimage_atto", num_classes=3)
    path = tmp_path / "weights.safetensors"
    torch.save({"model": source.state_dict()}, path)
    assert safetensors_header(path) is None
    assert set(read_checkpoint(path)["model"]) == set(source.state_dict())


def test_neither_format_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "notes.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    assert safetensors_header(path) is None
    with pytest.raises(CheckpointFileError, match="neither a torch.save file nor safetensors"):
        read_checkpoint(path)
