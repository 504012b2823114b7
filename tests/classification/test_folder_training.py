"""The upstream recipe (RandAugment, random resized crop, erasing, mixup/cutmix, EMA) on a
class-per-folder dataset with an unreadable file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from internimage.classification.data import UnreadableImageWarning
from internimage.train import PRESETS, Trainer, apply_overrides, load_training_checkpoint


def test_imagenet_recipe_on_an_image_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 3)):
        for cls in ("ant", "bee"):
            folder = tmp_path / "data" / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg")
    broken = tmp_path / "data" / "train" / "bee" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    config = apply_overrides(
        PRESETS["imagenet-1k"],
        [
            "model.name=internimage_atto", "model.depths=1,1,1,1",
            f"data.root={tmp_path / 'data'}", "data.image_size=32", "data.num_workers=0",
            "schedule.epochs=1", "schedule.warmup_epochs=0.5", "batch_size=8", "ema_decay=0.99",
            "progress=false", f"output_dir={tmp_path / 'runs'}", "name=folder",
        ],
    )
    with pytest.warns(UnreadableImageWarning, match="broken.png"):
        result = Trainer(config).fit()
    state = load_training_checkpoint(result.last_checkpoint)
    assert state["classes"] == ["ant", "bee"]
    # 17 files, batches of 8 with the last incomplete one dropped: 2 steps.
    assert state["global_step"] == 2
    assert 0.0 <= result.final["val_top1"] <= 100.0 and "ema_top1" in result.final
