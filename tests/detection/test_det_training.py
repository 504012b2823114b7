"""Detection through the one training loop: the CLI on tiny Fashion-MNIST scenes (COCO
layout) with eval and predict, resume, the optimiser groups, and the step schedule of the COCO
recipes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from command_line import COMMAND, set_args

pytest.importorskip("torchvision", reason="the det extra is not installed")
pytest.importorskip("pycocotools", reason="the det extra is not installed")

from internimage.errors import ConfigError  # noqa: E402
from internimage.train import apply_overrides, load_training_checkpoint  # noqa: E402
from internimage.train.config import PRESETS  # noqa: E402
from internimage.train.schedule import WarmupCosineSchedule  # noqa: E402
from internimage.train.tasks import create_task  # noqa: E402

# 32 training and 8 validation scenes of 64 px, a one-block-per-stage atto: 2 steps of 16.
TINY = [
    "device=cpu",
    "model.depths=1,1,1,1",
    "data.scenes_train=32",
    "data.scenes_val=8",
    "data.scene_size=64",
    "detection.min_sizes=64",
    "detection.max_size=64",
    "schedule.epochs=1",
    "schedule.warmup_epochs=0.5",
    "batch_size=16",
    "progress=false",
    "processes=1",
    "log_every=1",
]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def test_the_cli_trains_evaluates_draws_and_resumes_a_detector(tmp_path: Path) -> None:
    command = [*COMMAND, "train", "--preset", "fashion-mnist-scenes-detection",
               *set_args(TINY), "--data-root", str(tmp_path / "scenes"),
               "--output-dir", str(tmp_path), "--name", "det"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validation box AP" in result.stdout and "mask AP" in result.stdout
    run = tmp_path / "det"
    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1"]
    for key in ("val_bbox_AP", "val_segm_AP", "val_bbox_AP50", "val_segm_AP75"):
        assert 0.0 <= float(rows[0][key]) <= 100.0, key
    assert float(rows[0]["train_loss"]) > 0
    state = load_training_checkpoint(run / "best.pt")
    assert state["task"] == "detection" and state["main_metric"] == "bbox_AP"
    assert len(state["classes"]) == 10 and state["category_ids"] == list(range(1, 11))
    assert any(k.startswith("roi_heads.mask_predictor.") for k in state["model"])
    coco = tmp_path / "scenes" / "coco"
    assert (coco / "annotations" / "instances_val.json").is_file()

    # eval runs the checkpoint's validation set through pycocotools like the training loop.
    results = tmp_path / "results.json"
    evaluated = _cli("eval", "--checkpoint", str(run / "last.pt"), "--json", "--output",
                     str(results))
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    last = load_training_checkpoint(run / "last.pt")["metrics"]
    assert metrics["images"] == 8
    for key in ("bbox_AP", "segm_AP", "bbox_AP50"):
        assert metrics[key] == pytest.approx(last[f"val_{key}"], abs=1e-3), key
    detections = json.loads(results.read_text())
    assert len(detections) == metrics["detections"]
    assert all({"image_id", "category_id", "bbox", "score", "segmentation"} <= set(d)
               for d in detections)
    again = _cli("eval", "--checkpoint", str(run / "last.pt"), "--output", str(results))
    assert again.returncode == 1 and "--overwrite" in again.stderr
    wrong = _cli("eval", "--checkpoint", str(run / "last.pt"), "--data", "ade20k")
    assert wrong.returncode == 2 and "not a detection dataset" in wrong.stderr
    same = _cli("eval", "--task", "detection", "--checkpoint", str(run / "last.pt"), "--json")
    assert same.returncode == 0 and json.loads(same.stdout)["bbox_AP"] == metrics["bbox_AP"]
    other = _cli("eval", "--task", "segmentation", "--checkpoint", str(run / "last.pt"))
    assert other.returncode == 2 and "is a detection model" in other.stderr, other.stderr

    images = sorted((coco / "val").iterdir())[:2]
    drawn = tmp_path / "drawn"
    predicted = _cli("predict", *map(str, images), "--checkpoint", str(run / "best.pt"),
                     "--output-dir", str(drawn), "--json", "--score-threshold", "0")
    assert predicted.returncode == 0, predicted.stderr
    entries = json.loads(predicted.stdout)
    assert [Path(e["output"]).name for e in entries] == [p.name for p in images]
    for number, entry in enumerate(entries, start=1):
        assert Path(entry["output"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert all(d["image_id"] == number and 1 <= d["category_id"] <= 10
                   and d["class"] in state["classes"] for d in entry["detections"])

    resumed = subprocess.run([*COMMAND, "train", "--resume", str(run), "--epochs", "2"],
                             capture_output=True, text=True, timeout=600,
                             stdin=subprocess.DEVNULL)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert load_training_checkpoint(run / "last.pt")["global_step"] == 4


def test_fpn_and_heads_train_at_the_top_rate_and_frozen_stages_are_left_out() -> None:
    config = apply_overrides(PRESETS["fashion-mnist-scenes-detection"],
                             TINY + ["optim.layer_decay=0.5", "detection.frozen_stages=1"])
    task = create_task(config)
    task.classes = tuple(f"c{i}" for i in range(10))
    model = task.build_model()
    groups = task.param_groups(model)
    by_param = {id(p): g for g in groups for p in g["params"]}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(by_param) == len(trainable)
    body = model.backbone.body
    assert not any(p.requires_grad for p in body.patch_embed.parameters())
    assert not any(p.requires_grad for p in body.levels[0].parameters())
    fpn = model.backbone.fpn.layer_blocks[0][0]
    assert by_param[id(fpn.weight)]["lr_scale"] == 1.0
    assert by_param[id(fpn.weight)]["weight_decay"] == 0.05
    assert by_param[id(fpn.bias)]["weight_decay"] == 0.0
    assert by_param[id(model.roi_heads.box_predictor.cls_score.weight)]["lr_scale"] == 1.0
    deep = body.levels[1].blocks[0].dcn.output_proj.weight
    # depth index of stage 1's first block: 2 of 5 (stem 0, blocks 1..4, heads 5).
    assert by_param[id(deep)]["lr_scale"] == pytest.approx(0.5 ** 3)


def test_the_coco_recipes_divide_the_rate_by_ten_after_their_milestones() -> None:
    for name, milestones in (("coco-1x", (8, 11)), ("coco-3x", (27, 33))):
        config = PRESETS[name]
        assert config.task == "detection" and config.schedule.milestones == milestones
        assert config.data.train_split == "train2017"
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = WarmupCosineSchedule(optimizer, base_lr=1.0, warmup_lr=0.001, min_lr=0.0,
                                    warmup_steps=5, total_steps=120, decay="step",
                                    milestones=(80, 110))
    values = [schedule.value(step) for step in range(120)]
    assert values[0] == pytest.approx(0.001) and values[5] == 1.0
    assert values[79] == 1.0 and values[80] == pytest.approx(0.1)
    assert values[109] == pytest.approx(0.1) and values[110] == pytest.approx(0.01)
    with pytest.raises(ConfigError, match="needs schedule.milestones"):
        apply_overrides(PRESETS["fashion-mnist-scenes-detection"], ["schedule.decay=step"])
    with pytest.raises(ConfigError, match="gamma in"):
        apply_overrides(PRESETS["coco-1x"], ["schedule.gamma=0"])
