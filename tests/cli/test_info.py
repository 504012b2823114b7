"""``internimage info``."""

from __future__ import annotations

import json

import pytest

from internimage.cli.main import main


def test_table_lists_every_variant(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert list(lines)[:4] == [
        "internimage_atto", "internimage_femto", "internimage_pico", "internimage_nano"
    ]
    t = lines["internimage_t"]
    assert t[1] == "29.92M" and t[2] == "4.89G" and t[3] == "224" and t[4] == "83.5"
    assert lines["internimage_g"][1] == "3076.37M" and lines["internimage_h"][3] == "640"


def test_one_variant_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "internimage_l", "--json"]) == 0
    details = json.loads(capsys.readouterr().out)
    assert details["state_dict_entries"] == 839
    assert details["config"]["offset_scale"] == 2.0
    assert details["weights"]["url"].endswith("/internimage_l_22kto1k_384.pth")
    assert main(["info", "internimage_atto", "--image-size", "64", "--json"]) == 0
    small = json.loads(capsys.readouterr().out)
    assert small["image_size"] == 64 and small["top1"] is None and "weights" not in small


def test_unknown_variant(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "internimage_q"]) == 2
    assert "internimage_t" in capsys.readouterr().err
