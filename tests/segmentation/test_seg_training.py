"""Segmentation through the one training loop: the CLI on tiny Fashion-MNIST scenes, resume,
worker processes, torchrun (DDP, FSDP), the optimiser groups, and bad data as one-line errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from command_line import COMMAND, set_args, step_losses

pytest.importorskip("transformers", reason="the seg extra is not installed")

from internimage.errors import ConfigError  # noqa: E402
from internimage.train import Trainer, apply_overrides, load_training_checkpoint  # noqa: E402
from internimage.train.config import PRESETS  # noqa: E402
from internimage.train.launch import free_port  # noqa: E402
from internimage.train.tasks import create_task  # noqa: E402

# 48 training and 8 validation scenes of 64 px, a one-block-per-stage atto: 3 steps of 16.
TINY = [
    "device=cpu",
    "model.depths=1,1,1,1",
    "data.scenes_train=48",
    "data.scenes_val=8",
    "data.scene_size=64",
    "data.image_size=64",
    "schedule.epochs=2",
    "schedule.warmup_epochs=0.5",
    "progress=false",
    "processes=1",
    "log_every=1",
    "batch_size=16",
]


# Without augmentation: runs that differ only in how the work is split are compared step by step.
FIXED = [
    "segmentation.hflip=0", "segmentation.scale_range=1,1", "segmentation.photometric=false",
    "segmentation.cat_max_ratio=1", "schedule.epochs=1",
    # Adam divides each gradient by its own magnitude, so how far rounding differences grow
    # depends on the step size: comparisons are made at a fixed one, not the preset's (which
    # tuning changes).
    "optim.lr=1.2e-2",
]


@pytest.fixture(scope="module")
def scenes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scenes")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def _train(*args: str, scenes: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, "train", "--preset", "fashion-mnist-scenes", *set_args(TINY), "--data-root",
         str(scenes), "--output-dir", str(out), *args],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def test_the_cli_trains_segmentation_and_resumes(scenes_root: Path, tmp_path: Path) -> None:
    result = _train("--name", "seg", "--set", "checkpoint_every=1", scenes=scenes_root,
                    out=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validation mIoU" in result.stdout
    run = tmp_path / "seg"
    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    for row in rows:
        for key in ("val_mIoU", "val_mAcc", "val_aAcc"):
            assert 0.0 <= float(row[key]) <= 100.0, (key, row)
        assert float(row["train_loss"]) > 0
    state = load_training_checkpoint(run / "best.pt")
    assert state["task"] == "segmentation" and state["main_metric"] == "mIoU"
    assert state["classes"][0] == "background" and len(state["classes"]) == 11
    assert any(k.startswith("decode_head.") for k in state["model"])
    png = (run / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (scenes_root / "ADEChallengeData2016" / "classes.txt").is_file()

    # eval follows mmseg's test procedure image by image; on 64-px scenes trained at 64 px it is
    # the training loop's batched whole-image evaluation.
    evaluated = _cli("eval", "--checkpoint", str(run / "last.pt"), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    last = load_training_checkpoint(run / "last.pt")["metrics"]
    assert metrics["images"] == 8 and len(metrics["IoU"]) == 11
    assert metrics["mIoU"] == pytest.approx(last["val_mIoU"], abs=1e-3)
    assert metrics["aAcc"] == pytest.approx(last["val_aAcc"], abs=1e-3)
    wrong = _cli("eval", "--checkpoint", str(run / "last.pt"), "--data", "fashion-mnist-subset")
    assert wrong.returncode == 2 and "not a segmentation dataset" in wrong.stderr

    images = sorted((scenes_root / "ADEChallengeData2016" / "images" / "validation").iterdir())[:2]
    drawn = tmp_path / "drawn"
    predicted = _cli("predict", *map(str, images), "--checkpoint", str(run / "best.pt"),
                     "--output-dir", str(drawn), "--json")
    assert predicted.returncode == 0, predicted.stderr
    entries = json.loads(predicted.stdout)
    assert [Path(e["output"]).name for e in entries] == [p.name for p in images]
    for entry in entries:
        assert sum(c["share"] for c in entry["classes"]) == pytest.approx(1.0)
        assert Path(entry["output"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = _cli("predict", str(images[0]), "--checkpoint", str(run / "best.pt"),
                 "--output-dir", str(drawn))
    assert again.returncode == 1 and "--overwrite" in again.stderr
    assert "Traceback" not in again.stderr

    resumed = subprocess.run(
        [*COMMAND, "train", "--resume", str(run), "--epochs", "3"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert load_training_checkpoint(run / "last.pt")["global_step"] == 9


def test_two_worker_processes_train_the_same_segmentation_run(
    scenes_root: Path, tmp_path: Path
) -> None:
    """Without augmentation the runs differ in summation order only."""
    settings = TINY + FIXED + [f"data.root={scenes_root}", f"output_dir={tmp_path}"]
    base = PRESETS["fashion-mnist-scenes"]
    single = Trainer(apply_overrides(base, settings + ["name=one"])).fit()
    double = Trainer(apply_overrides(base, settings + ["name=two", "processes=2"])).fit()
    one = load_training_checkpoint(single.last_checkpoint)["model"]
    two = load_training_checkpoint(double.last_checkpoint)["model"]
    for name, value in one.items():
        if value.is_floating_point():
            torch.testing.assert_close(two[name], value, rtol=1e-3, atol=1e-4, msg=name)
    assert double.final["val_mIoU"] == pytest.approx(single.final["val_mIoU"], abs=0.5)


@pytest.mark.parametrize(
    "strategy", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)]
)
def test_torchrun_trains_and_evaluates_segmentation_like_one_process(
    scenes_root: Path, tmp_path: Path, strategy: str
) -> None:
    """Two gloo ranks with 8 images each follow the one-process losses, and their validation
    (4 scenes per rank, confusion matrices summed) equals a one-process evaluation of the saved
    weights."""
    settings = TINY + FIXED + [f"data.root={scenes_root}", f"output_dir={tmp_path}"]
    single = Trainer(apply_overrides(PRESETS["fashion-mnist-scenes"],
                                     settings + ["name=one"])).fit()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        f"--master_port={free_port()}", "-m", "internimage.cli.main", "train",
        "--preset", "fashion-mnist-scenes", *set_args(settings + [f"strategy={strategy}"]),
        "--batch-size", "8", "--name", strategy,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    run = tmp_path / strategy

    one, two = step_losses(single.run_dir), step_losses(run)
    assert len(one) == len(two) == 3
    # Summation order only (gradients all-reduced, batch-norm sums per rank then across):
    # rounding-sized; a wrong shard or per-rank batch norm moves the losses by 1e-2 or more.
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=1e-4, atol=1e-5)
    state = load_training_checkpoint(run / "last.pt")
    assert state["global_step"] == 3
    assert state["model"].keys() == load_training_checkpoint(single.last_checkpoint)["model"].keys()

    evaluated = _cli("eval", "--checkpoint", str(run / "last.pt"), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert metrics["images"] == 8
    recorded = state["metrics"]
    # The same weights on the same 8 scenes: equal up to the odd pixel whose arg-max flips
    # with the thread count (one of 32768 pixels moves a class IoU by about 0.01).
    for key in ("mIoU", "aAcc", "mAcc"):
        assert recorded[f"val_{key}"] == pytest.approx(metrics[key], abs=0.02), key


class _RecordingSegmenter(torch.nn.Module):
    """A fixed 3x3 conv from pixels to three class logits that records its input shapes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        self.shapes.append(tuple(pixel_values.shape))
        return SimpleNamespace(logits=self.conv(pixel_values))


def test_validation_predicts_at_the_training_scale_like_internimage_eval() -> None:
    """Each validation image, padding cut off, is resized to the training crop (short side) as
    `internimage eval` does, images of one size together; metrics count original pixels."""
    from internimage.segmentation import SegmentationEvaluator, predict_logits, test_settings

    config = apply_overrides(PRESETS["fashion-mnist-scenes"], TINY + ["data.image_size=32"])
    task = create_task(config)
    task.classes = ("a", "b", "c")
    generator = torch.Generator().manual_seed(1)
    items = [
        (torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator),
         torch.randint(0, 3, (h, w), generator=generator))
        for h, w in ((16, 16), (16, 24), (16, 16))
    ]
    batch = task.collate(items)
    model = _RecordingSegmenter()
    metrics = task.evaluate(model, [batch], torch.device("cpu"), None)
    # The two 16 x 16 images at 32 x 32 together; the 16 x 24 one (not padded to 24 x 24)
    # at 32 x 48, stretched to the next multiple of 32 (mmseg's ResizeToMultiple).
    assert sorted(model.shapes) == [(1, 3, 32, 64), (2, 3, 32, 32)]

    settings = test_settings(32, config.data.mean, config.data.std)
    evaluator = SegmentationEvaluator(3, ignore_index=255)
    for image, mask in items:
        evaluator.update(predict_logits(model, image, settings).argmax(0)[None], mask[None])
    expected = evaluator.compute()
    for key in ("mIoU", "mAcc", "aAcc"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-9), key


def test_the_heads_train_at_the_top_rate_without_decay_on_1d_parameters() -> None:
    config = apply_overrides(PRESETS["fashion-mnist-scenes"],
                             TINY + ["optim.layer_decay=0.5", "optim.weight_decay=0.05"])
    task = create_task(config)
    task.classes = tuple(f"c{i}" for i in range(11))
    model = task.build_model()
    groups = task.param_groups(model)
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert len(by_param) == sum(1 for p in model.parameters() if p.requires_grad)
    classifier = model.decode_head.classifier
    assert by_param[id(classifier.weight)]["lr_scale"] == 1.0
    assert by_param[id(classifier.weight)]["weight_decay"] == 0.05
    assert by_param[id(classifier.bias)]["weight_decay"] == 0.0
    stem = model.backbone.model.patch_embed.conv1.weight
    # Four blocks below the top: 0.5 ** 5 for the stem (depth index 0 of 5 + 1).
    assert by_param[id(stem)]["lr_scale"] == pytest.approx(0.5**5)


def test_a_mask_value_outside_the_classes_is_one_line(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    root = tmp_path / "data"
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(
                root / "images" / split / f"{i}.png")
            mask = np.zeros((64, 64), np.uint8)
            mask[0, 0] = 7 if (split, i) == ("train", 1) else 1
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    (root / "classes.txt").write_text("background\nthing\n")
    result = subprocess.run(
        [*COMMAND, "train", "--preset", "fashion-mnist-scenes", *set_args(TINY), "--data",
         "segmentation-folder", "--data-root", str(root), "--batch-size", "2",
         "--output-dir", str(tmp_path / "runs"), "--name", "bad"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("internimage: error")]
    assert len(lines) == 1 and "7" in lines[0] and "1.png" in lines[0], result.stderr


def test_a_segmentation_run_starts_from_a_classifier_backbone(tmp_path: Path) -> None:
    import internimage

    classifier = internimage.create_model("internimage_atto", num_classes=10,
                                          depths=(1, 1, 1, 1))
    with torch.no_grad():
        for p in classifier.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / "classifier.pt"
    torch.save({"model": classifier.state_dict()}, path)
    config = apply_overrides(PRESETS["fashion-mnist-scenes"], TINY + [f"model.finetune={path}"])
    task = create_task(config)
    task.classes = tuple(f"c{i}" for i in range(11))
    backbone = task.build_model().backbone.model.state_dict()
    source = classifier.state_dict()
    assert all(torch.equal(value, source[key]) for key, value in backbone.items())
    with pytest.raises(ConfigError, match="set one"):
        apply_overrides(config, ["model.pretrained=true"])


def test_a_fine_tuned_run_resumes_without_its_starting_checkpoint(
    scenes_root: Path, tmp_path: Path
) -> None:
    import internimage

    classifier = internimage.create_model("internimage_atto", num_classes=10,
                                          depths=(1, 1, 1, 1))
    start = tmp_path / "classifier.pt"
    torch.save({"model": classifier.state_dict()}, start)
    config = apply_overrides(PRESETS["fashion-mnist-scenes"], TINY + [
        f"model.finetune={start}", f"data.root={scenes_root}", f"output_dir={tmp_path}",
        "name=ft", "schedule.epochs=1", "checkpoint_every=1",
    ])
    first = Trainer(config).fit()
    start.unlink()  # its weights are in the run's checkpoint now
    resumed = Trainer(resume=first.run_dir, config_overrides={"schedule": {"epochs": 2}}).fit()
    assert load_training_checkpoint(resumed.last_checkpoint)["epoch"] == 2
    # Inference does not need it either.
    from internimage.segmentation import load_segmenter

    assert load_segmenter(checkpoint=resumed.best_checkpoint).classes[0] == "background"
