"""A run killed with SIGKILL mid-epoch and resumed ends with the same weights as an uninterrupted
run."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from tiny_settings import TINY_SETTINGS, set_args

from internimage.train import Trainer, apply_overrides, load_training_checkpoint
from internimage.train.config import PRESETS

# Everything random stays on: flips, padded crops, mixup/cutmix, drop path and the EMA, so the
# resumed run only matches if weights, optimiser, schedule, EMA and every RNG are restored.
RANDOM_SETTINGS = [
    "augment.hflip=0.5",
    "augment.crop_padding=2",
    "augment.mixup_alpha=0.8",
    "augment.cutmix_alpha=1.0",
    "model.drop_path_rate=0.1",
    "ema_decay=0.9",
    "checkpoint_every=1",
]


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path: Path) -> None:
    settings = TINY_SETTINGS + RANDOM_SETTINGS
    reference = Trainer(
        apply_overrides(PRESETS["fashion-mnist"], settings + [f"output_dir={tmp_path}", "name=ref"])
    ).fit()

    command = [sys.executable, "-m", "internimage.cli.main", "train", *set_args(settings),
               "--output-dir", str(tmp_path), "--name", "killed"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    checkpoint = tmp_path / "killed" / "last.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists():
        assert process.poll() is None, process.stdout.read().decode()
        assert time.monotonic() < deadline, "no checkpoint written in time"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    interrupted = load_training_checkpoint(checkpoint)
    total_steps = 2 * 4
    # Killed inside the run and (with 4 steps per epoch, a checkpoint after every step) the
    # first checkpoints are mid-epoch ones.
    assert interrupted["global_step"] < total_steps

    resumed_run = subprocess.run(
        [sys.executable, "-m", "internimage.cli.main", "train", "--resume",
         str(tmp_path / "killed")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert resumed_run.returncode == 0, resumed_run.stdout + resumed_run.stderr
    assert "resuming at epoch" in resumed_run.stdout
    assert "with the earlier calls" in resumed_run.stdout

    expected = load_training_checkpoint(reference.last_checkpoint)
    got = load_training_checkpoint(checkpoint)
    assert got["global_step"] == expected["global_step"] == total_steps
    # Bitwise: the same operations on the same data in the same order on deterministic kernels.
    for section in ("model",):
        for name, value in expected[section].items():
            assert torch.equal(got[section][name], value), f"{section}.{name} differs"
    for name, value in expected["ema"]["module"].items():
        assert torch.equal(got["ema"]["module"][name], value), f"ema.{name} differs"
    for key in ("val_top1", "val_loss"):
        assert got["metrics"][key] == expected["metrics"][key]
    # The run time adds up over the killed call and the resumed one.
    assert 0 < interrupted["train_time_s"] < got["train_time_s"]
    # The epochs' mean training losses cover every step of the epoch, those before the kill too.
    def epoch_rows(run: Path) -> list[dict[str, str]]:
        with (run / "metrics.csv").open() as handle:
            return list(csv.DictReader(handle))

    expected_rows, got_rows = epoch_rows(reference.run_dir), epoch_rows(tmp_path / "killed")
    assert [row["epoch"] for row in got_rows] == ["1", "2"]
    assert [row["train_loss"] for row in got_rows] == [row["train_loss"] for row in expected_rows]
    # Nothing half-written is left of the killed call.
    assert not list((tmp_path / "killed").glob(".*.tmp"))
    # The step log has each step exactly once, the replayed steps overwritten.
    lines = (tmp_path / "killed" / "train_steps.csv").read_text().splitlines()
    steps = [int(line.split(",")[0]) for line in lines[1:]]
    assert steps == list(range(1, total_steps + 1))
