"""``internimage bench``: progress while it runs, one table at the end, JSON on request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from internimage.cli.main import main

_TINY = ["--model", "internimage_atto", "--image-size", "32", "--batch", "1", "2",
         "--repeats", "1", "--backends", "numba,reference"]


def test_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "bench.json"
    assert main(["bench", *_TINY, "--json", str(out_file)]) == 0
    captured = capsys.readouterr()
    # Operator (one batch, two backends; at the model's first stage: atto has 16 channels in 2
    # groups) then the model (two batches, two backends).
    assert captured.err.count("\n") == 6 and captured.err.startswith("[1/2] dcnv3 C=16 G=2")
    lines = captured.out.splitlines()
    assert lines[0].startswith("target") and len(lines) == 2 + 6 + 2
    assert lines[-1] == f"measurements written to {out_file}"
    rows = json.loads(out_file.read_text())
    assert [(r["target"], r["batch"], r["backend"]) for r in rows][2:] == [
        ("internimage_atto", 1, "numba"), ("internimage_atto", 1, "reference"),
        ("internimage_atto", 2, "numba"), ("internimage_atto", 2, "reference"),
    ]
    assert all(r["images_per_s"] > 0 for r in rows)
    # An existing file is kept unless asked.
    assert main(["bench", *_TINY, "--what", "operator", "--json", str(out_file)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert len(json.loads(out_file.read_text())) == 6


def test_a_flash_internimage_model_times_dcnv4(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "--model", "flash_internimage_atto", "--what", "operator", "--batch", "1",
            "--repeats", "1", "--backends", "reference"]
    assert main(args) == 0
    assert capsys.readouterr().err.startswith("[1/1] dcnv4 C=16 G=2")


@pytest.mark.parametrize(("args", "message"), [
    (["--paths", "eager,jit"], "unknown path jit"),
    (["--model", "internimage_q"], "unknown model 'internimage_q'"),
    (["--device", "cuda:x"], "--device 'cuda:x'"),
])
def test_bad_arguments_are_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--what", "model", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("internimage: error:")


def test_argument_type_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["bench", "--batch", "0"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "--batch: must be at least 1" in err
