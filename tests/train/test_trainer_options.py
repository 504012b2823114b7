"""Training options that must not change the arithmetic (gradient checkpointing) or must run
(bf16 autocast, gradient accumulation, fine-tuning with a new head)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tiny_settings import NO_AUGMENTATION, TINY_SETTINGS

from internimage.train import Trainer, apply_overrides, load_training_checkpoint
from internimage.train.config import PRESETS

ONE_EPOCH = TINY_SETTINGS + NO_AUGMENTATION + ["schedule.epochs=1", "schedule.warmup_epochs=0"]


def _run(tmp_path: Path, name: str, extra: list[str]) -> dict:
    config = apply_overrides(
        PRESETS["fashion-mnist"], ONE_EPOCH + extra + [f"output_dir={tmp_path}", f"name={name}"]
    )
    result = Trainer(config).fit()
    return load_training_checkpoint(result.last_checkpoint)


def test_gradient_checkpointing_gives_the_same_weights(tmp_path: Path) -> None:
    plain = _run(tmp_path, "plain", [])
    recomputed = _run(tmp_path, "ckpt", ["model.grad_checkpointing=true"])
    for name, value in plain["model"].items():
        torch.testing.assert_close(recomputed["model"][name], value, rtol=1e-5, atol=1e-7,
                                   msg=name)


def test_bf16_autocast_and_accumulation_train(tmp_path: Path) -> None:
    state = _run(tmp_path, "bf16", ["amp=bf16", "accum_steps=2", "batch_size=8"])
    # 64 images, 8 per micro-batch, 2 micro-batches per step: 4 optimiser steps.
    assert state["global_step"] == 4
    assert math.isfinite(state["metrics"]["val_loss"])
    assert state["scheduler"]["step_count"] == 4


def test_finetune_replaces_the_head(tmp_path: Path) -> None:
    import internimage

    source = internimage.create_model("internimage_atto", num_classes=7, depths=(1, 1, 1, 1))
    weights = tmp_path / "source.pth"
    torch.save({"model": source.state_dict()}, weights)
    state = _run(tmp_path, "ft", [f"model.finetune={weights}", "optim.lr=1e-9",
                                  "schedule.warmup_lr=1e-9", "schedule.min_lr=1e-9"])
    assert state["model"]["head.weight"].shape[0] == 10
    # With a vanishing learning rate the backbone is still the source's.
    torch.testing.assert_close(
        state["model"]["patch_embed.conv1.weight"], source.state_dict()["patch_embed.conv1.weight"],
        rtol=0, atol=1e-6,
    )


def test_a_run_counted_in_steps_stops_at_its_last_step(tmp_path: Path) -> None:
    """Six steps at four per epoch: two epochs, the second cut after two steps, evaluated."""
    config = apply_overrides(
        PRESETS["fashion-mnist"],
        TINY_SETTINGS + NO_AUGMENTATION + ["schedule.steps=6", "schedule.warmup_steps=2",
                                           "schedule.decay=poly", "schedule.min_lr=0",
                                           f"output_dir={tmp_path}", "name=steps"],
    )
    result = Trainer(config).fit()
    state = load_training_checkpoint(result.last_checkpoint)
    assert state["global_step"] == 6 and state["scheduler"]["step_count"] == 6
    with (result.run_dir / "metrics.csv").open() as handle:
        assert [line.split(",")[:2] for line in handle.read().splitlines()[1:]] == [
            ["4", "1"], ["6", "2"]
        ]
    rates = [float(line.split(",")[2]) for line in
             (result.run_dir / "train_steps.csv").read_text().splitlines()[1:]]
    # Warm-up to the peak in two steps, then linear (poly, power 1) decay towards 0 at step 6.
    peak = rates[2]
    assert rates[0] < rates[1] < peak
    assert rates[3:] == pytest.approx([peak * 3 / 4, peak / 2, peak / 4], rel=1e-6)
