"""``internimage export``: a checked ONNX file from a checkpoint, refusing to overwrite, and
one-line errors for what a user can get wrong."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("onnx", reason="the onnx extra is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed")

import internimage  # noqa: E402
from command_line import assert_one_error_line, run_command  # noqa: E402
from internimage.cli.main import main  # noqa: E402
from internimage.ops import use_backend  # noqa: E402
from tiny_checkpoint import save_tiny_classifier  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A training checkpoint of a one-block-per-stage atto (3 classes, 32 px), and its model."""
    torch.manual_seed(0)
    model = internimage.create_model("internimage_atto", num_classes=3, depths=(1, 1, 1, 1))
    path = save_tiny_classifier(tmp_path_factory.mktemp("ckpt") / "tiny.pt", model, image_size=32)
    return path, model.eval()


def test_export_writes_a_checked_graph_and_refuses_to_overwrite(
    checkpoint, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, model = checkpoint
    out = tmp_path / "deploy" / "tiny.onnx"
    result = run_command("export", str(path), "-o", str(out))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith(
        f"{out}: ONNX opset 18, input images [batch, 3, 32, 32], outputs logits; "
    )
    error = float(lines[0].split("matches PyTorch to ")[1].split()[0])
    assert 0 <= error <= 1e-4
    # The checkpoint's own size (32) and a dynamic batch; the graph computes the model.
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, 32, 32]
    images = torch.randn(2, 3, 32, 32)
    (logits,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad(), use_backend("reference"):
        expected = model(images).numpy()
    assert np.abs(logits - expected).max() <= 1e-4

    # Again: the file is kept, and nothing is exported.
    before = out.read_bytes()
    assert main(["export", str(path), "-o", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_error_line(captured.err, f"{out} exists", "--overwrite")
    assert out.read_bytes() == before


@pytest.mark.slow
def test_overwrite_replaces_the_graph(checkpoint, tmp_path) -> None:
    path, _ = checkpoint
    out = tmp_path / "tiny.onnx"
    out.write_bytes(b"old")
    result = run_command("export", str(path), "-o", str(out), "--overwrite", "--static-batch",
                         "--batch", "2", "--input-size", "64", "32", "--opset", "20")
    assert result.returncode == 0, result.stderr
    assert "ONNX opset 20, input images [2, 3, 64, 32]" in result.stdout
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [2, 3, 64, 32]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]


@pytest.mark.parametrize(
    ("args", "status", "fragments"),
    [
        (["internimage_q"], 1, ["internimage_q is neither a model name", "checkpoint file"]),
        (["mask_rcnn_internimage_t_1x_coco"], 2, ["Mask R-CNN", "cannot be exported"]),
        (["internimage_atto", "--ema"], 2, ["--ema and --model are for checkpoint files"]),
        (["internimage_atto", "--input-size", "32", "32", "32"], 2, ["S or H W"]),
        (["internimage_atto", "--opset", "17", "--input-size", "32"], 2, ["opset must be"]),
        (["upernet_internimage_t_ade20k", "--features-only"], 2, ["for classifiers"]),
        (["internimage_atto", "--pretrained"], 2, ["no released weights"]),
    ],
)
def test_one_line_errors(args: list[str], status: int, fragments: list[str], tmp_path: Path,
                         capsys: pytest.CaptureFixture[str],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never reach for the network
    out = tmp_path / "m.onnx"
    assert main(["export", *args, "-o", str(out)]) == status
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_error_line(captured.err, *fragments)
    assert not out.exists()


def test_a_checkpoint_with_pretrained_is_a_usage_error(checkpoint, tmp_path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    path, _ = checkpoint
    assert main(["export", str(path), "--pretrained", "-o", str(tmp_path / "m.onnx")]) == 2
    assert_one_error_line(capsys.readouterr().err, "--pretrained is for model names")


def test_every_option_has_help() -> None:
    from internimage.cli import export

    subparsers = argparse.ArgumentParser().add_subparsers()
    export.add_parser(subparsers)
    actions = subparsers.choices["export"]._actions
    assert {a.dest for a in actions} >= {"source", "output", "input_size", "static_batch"}
    for action in actions:
        assert action.help, action.dest
