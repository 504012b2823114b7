"""``internimage list`` and ``internimage verify``: output, exit status and one-line errors.

Run in-process through ``main`` (the console script's entry point), and once as a user runs
the installed command, in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from command_line import assert_one_error_line, run_command
from internimage.catalog import RELEASES, list_pretrained
from internimage.cli.main import main
from internimage.models import InternImage


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_prints_every_release_and_says_which_load(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "list")
    assert code == 0, err
    lines = out.splitlines()
    rows = lines[2:-1]
    assert [line.split()[0] for line in rows] == list(RELEASES)
    built = list_pretrained(buildable=True)
    assert {line.split()[0] for line in rows if line.endswith(" yes")} == set(built)
    assert lines[-1] == f"{len(RELEASES)} released checkpoints, {len(built)} load in this library"

    code, out, err = _run(capsys, "list", "*coco*", "--method", "mask_rcnn", "--family",
                          "internimage", "--built", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["name"] for r in rows] == [
        f"mask_rcnn_internimage_{k}_fpn_{x}_coco" for k in "tsb" for x in ("1x", "3x")]
    assert all(r["buildable"] and r["classes"] == "coco" for r in rows)
    assert rows[0]["metrics"] == {"box_ap": 47.2, "mask_ap": 42.5}


def test_list_refuses_a_bad_choice_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["list", "--task", "segmentation"])
    assert exit_info.value.code == 2
    assert_one_error_line(capsys.readouterr().err, "--task", "invalid choice: 'segmentation'")


def _tiny_t_file(tmp_path: Path) -> tuple[Path, Path]:
    with torch.device("meta"):
        shapes = InternImage.from_upstream_config(
            RELEASES["internimage_t_1k_224"].backbone_arguments()).state_dict()
    state = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in shapes.items()}
    good = tmp_path / "internimage_t_1k_224.pth"
    torch.save({"model": state}, good)
    state["levels.0.blocks.0.dcn.offset.weight"] = torch.zeros(1)
    state.pop("levels.0.norm.weight", None)
    state.pop("head.weight")
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    return good, bad


def test_verify_reports_in_one_screen_with_the_exit_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = _tiny_t_file(tmp_path)
    code, out, err = _run(capsys, "verify", "internimage_t_1k_224.pth", str(good))
    assert code == 0, err
    assert out.strip() == (
        f"{good}: loads as internimage_t_1k_224 (633 tensors, every key and shape matches)")

    code, out, err = _run(capsys, "verify", "internimage_t_1k_224", str(bad))
    assert code == 1, err
    lines = out.splitlines()
    assert lines[0].startswith(f"{bad}: does not load as internimage_t_1k_224: ")
    assert "  missing: head.weight [1000, 768]" in lines
    assert any(line.startswith("  wrong shape: levels.0.blocks.0.dcn.offset.weight: file [1]")
               for line in lines)

    # A file of another model: many problems, the report stays on one screen.
    code, out, _ = _run(capsys, "verify", "upernet_internimage_t_512_160k_ade20k", str(good),
                        "--json")
    report = json.loads(out)
    assert code == 1 and not report["loads"] and len(report["problems"]) > 100
    code, out, _ = _run(capsys, "verify", "upernet_internimage_t_512_160k_ade20k", str(good))
    assert code == 1 and len(out.splitlines()) == 22
    assert "(--json lists them all)" in out


def test_verify_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, _ = _tiny_t_file(tmp_path)
    code, _, err = _run(capsys, "verify", "internimage_t_1k", str(good))
    assert code == 2
    assert_one_error_line(err, "no released checkpoint is called 'internimage_t_1k'",
                          "did you mean internimage_t_1k_224")
    code, _, err = _run(capsys, "verify", "internimage_t_1k_224", str(tmp_path / "missing.pth"))
    assert code == 1
    assert_one_error_line(err, "checkpoint file not found", "missing.pth")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    code, _, err = _run(capsys, "verify", "internimage_t_1k_224", str(text))
    assert code == 1
    assert_one_error_line(err, "notes.pth is not a checkpoint")
    code, _, err = _run(capsys, "verify", "dino_4scale_internimage_t_1x_coco", str(good))
    assert code == 2
    assert_one_error_line(err, "a DINO model (backbone InternImage-T), which this library "
                               "cannot build yet")


def test_the_installed_command_reports_an_unreadable_file_in_one_line(tmp_path: Path) -> None:
    text = tmp_path / "notes.safetensors"
    text.write_text("not a checkpoint")
    result = run_command("verify", "upernet_internimage_t_ade20k", str(text))
    assert result.returncode == 1 and not result.stdout
    assert_one_error_line(result.stderr, "notes.safetensors is not a checkpoint")
