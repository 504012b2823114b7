"""``internimage visualize``: a PNG of the sampling maps for a tiny checkpoint, and one-line
errors for what a user can get wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import internimage
from command_line import assert_one_error_line, run_command
from hub_cache import offline_hub
from internimage.cli.main import main
from internimage.data import demo_photo
from internimage.layers.dcnv3 import DCNv3
from tiny_checkpoint import save_tiny_classifier


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training checkpoint of a one-block-per-stage atto (3 classes, 64 px) whose offset and
    mask projections are random, so that the points move away from the regular grid."""
    torch.manual_seed(0)
    model = internimage.create_model("internimage_atto", num_classes=3, depths=(1, 1, 1, 1))
    for module in model.modules():
        if isinstance(module, DCNv3):
            torch.nn.init.normal_(module.offset.weight, std=0.2)
            torch.nn.init.normal_(module.mask.weight, std=0.2)
    return save_tiny_classifier(tmp_path_factory.mktemp("ckpt") / "tiny.pt", model, image_size=64)


def test_visualize_writes_a_png_and_refuses_to_overwrite(checkpoint: Path, tmp_path,
                                                         capsys) -> None:
    out = tmp_path / "map.png"
    result = run_command("visualize", "demo:chelsea", "--checkpoint", str(checkpoint),
                         "-o", str(out), "--points", "10,20", "300,200")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(out)]  # one line: where the picture is
    assert result.stderr == ""
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.mode == "RGBA"
        assert picture.width > 1000 and picture.height > 200  # one row of four panels
    first = out.read_bytes()

    assert main(["visualize", "demo:chelsea", "--checkpoint", str(checkpoint), "-o",
                 str(out)]) == 1
    again = capsys.readouterr()
    assert again.out == ""
    assert_one_error_line(again.err, str(out), "exists", "--overwrite")
    assert out.read_bytes() == first  # untouched


def test_overwrite_default_name_and_all_blocks(checkpoint: Path, tmp_path, monkeypatch,
                                               capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["visualize", "demo:coffee", "--checkpoint", str(checkpoint),
                 "--image-size", "48"]) == 0
    default = tmp_path / "coffee_sampling.png"
    assert capsys.readouterr().out.splitlines() == ["coffee_sampling.png"]
    with Image.open(default) as picture:
        one_row = picture.size
    assert main(["visualize", "demo:coffee", "--checkpoint", str(checkpoint), "--overwrite",
                 "--blocks", "all", "--alignment", "cell", "--image-size", "48"]) == 0
    with Image.open(default) as picture:
        # One block per stage here, so "all" is the same single row of panels.
        assert picture.size == one_row


def test_visualize_reads_image_files_of_any_mode(checkpoint: Path, tmp_path, capsys) -> None:
    grey = tmp_path / "grey.png"
    Image.fromarray(np.arange(50 * 70, dtype=np.uint8).reshape(50, 70) % 251).save(grey)
    out = tmp_path / "grey_map.png"
    assert main(["visualize", str(grey), "--checkpoint", str(checkpoint), "-o", str(out),
                 "--points", "69,49"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as picture:
        assert picture.width > 0 and picture.height > 0


def test_a_bad_point_is_a_one_line_usage_error(checkpoint: Path, tmp_path) -> None:
    out = tmp_path / "map.png"
    result = run_command("visualize", "demo:chelsea", "--checkpoint", str(checkpoint),
                         "-o", str(out), "--points", "10;20")
    assert result.returncode == 2
    assert_one_error_line(result.stderr, "--points", "10;20")
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "code", "fragments"),
    [
        (["--points", "400,10"], 2, ["400,10", "outside the 320x213 image"]),
        (["-o", "map.jpg"], 2, [".png"]),
        (["--ema"], 2, ["EMA weights"]),
    ],
)
def test_user_errors_in_process(checkpoint: Path, tmp_path, monkeypatch, capsys,
                                args: list[str], code: int, fragments: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["visualize", "demo:chelsea", "--checkpoint", str(checkpoint), *args]) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_error_line(captured.err, *fragments)
    assert list(tmp_path.iterdir()) == []


def test_image_and_model_errors(checkpoint: Path, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    cases = [
        (["demo:dog", "--checkpoint", str(checkpoint)], 2, ["demo photo 'dog'", "chelsea"]),
        ([str(tmp_path / "nope.jpg"), "--checkpoint", str(checkpoint)], 1, ["nope.jpg"]),
        (["demo:chelsea"], 2, ["--model", "--checkpoint"]),
        (["demo:chelsea", "--checkpoint", str(tmp_path / "missing.pt")], 1, ["missing.pt"]),
    ]
    for args, code, fragments in cases:
        assert main(["visualize", *args]) == code, args
        captured = capsys.readouterr()
        assert_one_error_line(captured.err, *fragments)
    assert list(tmp_path.iterdir()) == []


def test_uncached_released_weights_are_a_one_line_error(tmp_path, monkeypatch) -> None:
    offline_hub(monkeypatch, tmp_path / "hub")
    result = run_command("visualize", "demo:astronaut", "--model", "internimage_t", "-o",
                         str(tmp_path / "map.png"))
    assert result.returncode == 1
    assert_one_error_line(result.stderr, "internimage_t_1k_224.pth", "cache")
    assert not (tmp_path / "map.png").exists()


def test_demo_photo_paths_work_as_files() -> None:
    # What `visualize demo:NAME` reads is the bundled file.
    assert demo_photo("demo:chelsea") == demo_photo("chelsea")
    with Image.open(demo_photo("chelsea")) as picture:
        assert picture.size == (320, 213)
