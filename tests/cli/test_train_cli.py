"""``internimage train``, ``eval`` and ``predict`` end to end on tiny settings."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from internimage.cli.main import main
from internimage.data import FASHION_MNIST_CLASSES, load_bundled_subset

TINY = [
    "--set", "model.depths=1,1,1,1",
    "--set", "data.train_limit=64",
    "--set", "data.val_limit=32",
    "--set", "schedule.warmup_epochs=0.5",
    "--set", "ema_decay=0.9",
    "--set", "progress=false",
    "--epochs", "2",
    "--batch-size", "16",
    "--image-size", "32",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", *TINY, "--output-dir", str(out), "--name", "tiny"]) == 0
    return out / "tiny"


def test_train_writes_config_metrics_plot_and_checkpoints(trained_run: Path, capsys) -> None:
    config = json.loads((trained_run / "config.json").read_text())
    assert config["model"]["depths"] == [1, 1, 1, 1] and config["schedule"]["epochs"] == 2
    with (trained_run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for row in rows:
        assert 0.0 <= float(row["val_top1"]) <= float(row["val_top5"]) <= 100.0
        assert float(row["val_loss"]) > 0 and row["ema_top1"] != ""
    png = (trained_run / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    state = torch.load(trained_run / "best.pt", weights_only=True)
    assert state["classes"] == list(FASHION_MNIST_CLASSES)
    assert {"model", "optimizer", "scheduler", "ema", "rng", "config"} <= state.keys()


def test_eval_reports_the_training_metrics(trained_run: Path, capsys) -> None:
    last = torch.load(trained_run / "last.pt", weights_only=True)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(trained_run / "last.pt"), "--limit", "32",
                 "--workers", "0", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # The same 32 validation images, model and preprocessing as the last epoch of training.
    assert metrics["count"] == 32
    assert metrics["top1"] == pytest.approx(last["metrics"]["val_top1"])
    assert metrics["top5"] == pytest.approx(last["metrics"]["val_top5"])
    assert main(["eval", "--checkpoint", str(trained_run / "last.pt"), "--ema", "--limit", "32",
                 "--workers", "0", "--json"]) == 0
    ema = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ema["top1"] == pytest.approx(last["metrics"]["ema_top1"])


def test_predict_prints_topk_fashion_classes(trained_run: Path, tmp_path: Path, capsys) -> None:
    images, labels = load_bundled_subset("test")
    files = []
    for i in range(2):
        path = tmp_path / f"item{i}.png"
        Image.fromarray(images[i]).save(path)
        files.append(str(path))
    capsys.readouterr()
    assert main(["predict", *files, "--checkpoint", str(trained_run / "best.pt"), "--topk", "3",
                 "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in results] == files
    for result in results:
        probs = [e["probability"] for e in result["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
        assert all(e["class"] == FASHION_MNIST_CLASSES[e["index"]] for e in result["top"])


def test_predict_reports_unreadable_files(trained_run: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(good)
    assert main(["predict", str(bad), str(good), "--checkpoint",
                 str(trained_run / "last.pt")]) == 1
    captured = capsys.readouterr()
    assert "bad.png: cannot read image" in captured.err and "bad.png" not in captured.out
    assert "good.png:" in captured.out


def test_print_config_shows_the_main_job(capsys) -> None:
    assert main(["train", "--print-config", "--lr", "1e-3"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["data"]["dataset"] == "fashion-mnist-subset"
    assert config["optim"]["lr"] == 1e-3


@pytest.mark.parametrize(
    ("command", "shown"),
    [("train", "(default: fashion-mnist)"), ("eval", "(default: 64)"), ("predict", "(default: 5)")],
)
def test_help_shows_defaults_that_say_something(command: str, shown: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    assert shown in text
    assert "(default: None)" not in text and "(default: False)" not in text
    assert ") (default:" not in text  # no second default after one the help text names
