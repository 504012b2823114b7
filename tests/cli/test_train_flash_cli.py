"""A small FlashInternImage trains through the one training loop from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from internimage.cli.main import main


def test_two_steps_of_a_small_flash_internimage(tmp_path: Path) -> None:
    args = [
        "train", "--model", "flash_internimage_atto",
        "--set", "model.depths=1,1,1,1", "--set", "data.train_limit=32",
        "--set", "data.val_limit=16", "--set", "progress=false",
        "--epochs", "1", "--batch-size", "16", "--image-size", "32",
        "--output-dir", str(tmp_path), "--name", "flash",
    ]
    assert main(args) == 0
    run = tmp_path / "flash"
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["name"] == "flash_internimage_atto"
    checkpoint = torch.load(run / "last.pt", weights_only=True)
    assert checkpoint["model_name"] == "flash_internimage_atto"
    keys = checkpoint["model"]
    assert "levels.0.blocks.0.dcn.offset_mask.weight" in keys
    assert "levels.0.blocks.0.mlp.fc2.bias" not in keys
    # Two optimiser steps (32 images, batch 16) moved the offsets off their zero start.
    assert float(keys["levels.0.blocks.0.dcn.offset_mask.weight"].abs().max()) > 0
