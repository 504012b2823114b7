"""``benchmarks/ablation_table6.py`` on tiny settings: its runs, files and table rows."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from script_loading import load_benchmark

# Tiny runs of both tasks: one epoch, a few images, 32 px, one process.
COMMON = ["--seeds", "0", "--train-limit", "32", "--val-limit", "16", "--set", "processes=1"]
CLASSIFICATION = ["--epochs", "1", "--image-size", "32", "--cls-set",
                  "data.dataset=fashion-mnist-subset", "--cls-set", "batch_size=16"]


def _segmentation(scenes: Path) -> list[str]:
    return ["--seg-epochs", "1", "--seg-image-size", "32", "--seg-set", f"data.root={scenes}",
            "--seg-set", "data.scenes_train=8", "--seg-set", "data.scenes_val=4",
            "--seg-set", "data.scene_size=64", "--seg-set", "batch_size=4"]


@pytest.fixture(scope="module")
def table6() -> ModuleType:
    """The script loaded as a module."""
    return load_benchmark("ablation_table6.py")


def _table_rows(text: str) -> dict[str, list[str]]:
    """``{variant label: cells}`` of the Markdown table."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("variant",) and len(cells) == 7:
            rows[cells[0]] = cells[1:]
    return rows


def test_classification_runs_and_writes_the_files(table6: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "results"
    record = table6.main(
        ["--tasks", "classification", "--variants", "sigmoid", "full", *COMMON, *CLASSIFICATION,
         "--output-dir", str(out), "--runs-dir", str(tmp_path / "runs"), "--stem", "t6"]
    )
    for name in ("t6.json", "t6.md", "t6_curves.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "t6_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = record["runs"]
    # The table's order, whatever the command line's.
    assert [(r["task"], r["variant"], r["seed"]) for r in runs] == [
        ("classification", "full", 0), ("classification", "sigmoid", 0)
    ]
    for run in runs:
        assert 0.0 <= run["final"] <= 100.0 and run["best"] >= run["final"]
        assert [epoch for epoch, _ in run["curve"]] == [1]
        assert run["curve"][-1][1] == run["final"]
        assert run["wall_time_s"] > 0 and run["finetune"] is None
        assert (run["epochs"], run["image_size"], run["batch_size"]) == (1, 32, 16)
        config = run["config"]
        assert config["data"]["dataset"] == "fashion-mnist-subset"
        assert config["data"]["train_limit"] == 32 and config["data"]["val_limit"] == 16
        assert Path(run["run_dir"], "metrics.csv").is_file()
    full, sigmoid = runs
    assert full["config"]["model"]["mask_normalization"] is None
    assert sigmoid["config"]["model"]["mask_normalization"] == "sigmoid"
    # Same budget; sigmoid normalisation adds no parameter.
    assert full["config"]["optim"] == sigmoid["config"]["optim"]
    assert full["params"] == sigmoid["params"] == record["params"]["full"]

    stored = json.loads((out / "t6.json").read_text())
    assert stored["runs"] == runs
    summary = stored["summary"]["classification"]
    assert summary["full"]["delta"] == 0.0 and summary["full"]["std"] is None
    assert summary["sigmoid"]["delta"] == pytest.approx(sigmoid["final"] - full["final"])

    text = (out / "t6.md").read_text()
    rows = _table_rows(text)
    assert list(rows) == ["full DCNv3", "sigmoid point weights"]
    assert rows["full DCNv3"][:5] == [f"{full['params'] / 1e6:.3f}", f"{full['final']:.2f}", "—",
                                      "n/a", "n/a"]
    assert rows["sigmoid point weights"][1:3] == [
        f"{sigmoid['final']:.2f}", f"{sigmoid['final'] - full['final']:+.2f}"
    ]
    assert "machine:" in text and "versions:" in text and "ablation_table6.py" in text
    assert "lowers the accuracy" in text and "t6_curves.png" in text


def test_segmentation_starts_from_the_classifier_of_the_same_variant(
    table6: ModuleType, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    record = table6.main(
        ["--tasks", "segmentation", "classification", "--variants", "unshared", *COMMON,
         *CLASSIFICATION, *_segmentation(tmp_path / "scenes"), "--output-dir", str(out),
         "--runs-dir", str(tmp_path / "runs")]
    )
    classifier, segmenter = record["runs"]
    assert (classifier["task"], segmenter["task"]) == ("classification", "segmentation")
    # The unshared per-point projections load into the UperNet backbone.
    assert segmenter["finetune"] == classifier["last_checkpoint"]
    assert segmenter["config"]["model"]["dcn_weights"] == "unshared"
    assert segmenter["metric"] == "mIoU" and 0.0 <= segmenter["final"] <= 100.0
    # UperNet: the backbone plus its heads.
    assert segmenter["params"] > classifier["params"]
    rows = _table_rows((out / "ablation_table6.md").read_text())
    assert list(rows) == ["unshared weights"]
    assert rows["unshared weights"][3] == f"{segmenter['final']:.2f}"
    assert rows["unshared weights"][4] == "n/a"  # no full DCNv3 row to compare with
    assert "the classifier trained here" in (out / "ablation_table6.md").read_text()
    # The run's checkpoint loads for inference with the option (strictly, its [P, C, C] weights).
    from internimage.layers.dcnv3 import PointProjection
    from internimage.segmentation import load_segmenter

    loaded = load_segmenter(checkpoint=segmenter["last_checkpoint"])
    dcn = loaded.model.backbone.model.levels[0].blocks[0].dcn
    assert isinstance(dcn.output_proj, PointProjection)


def test_summary_means_standard_deviations_and_deltas(table6: ModuleType) -> None:
    def run(variant: str, seed: int, final: float) -> dict[str, object]:
        return {"task": "classification", "variant": variant, "seed": seed, "final": final,
                "wall_time_s": 60.0}

    record = {
        "settings": {"tasks": ["classification"], "variants": ["full", "unshared", "sigmoid"]},
        "runs": [run("full", 0, 90.0), run("full", 1, 91.0), run("unshared", 0, 88.0),
                 run("unshared", 1, 89.0)],
    }
    table = table6.summary_table(record)["classification"]
    assert table["full"]["mean"] == 90.5 and table["full"]["std"] == pytest.approx(0.5**0.5)
    assert table["unshared"]["delta"] == pytest.approx(-2.0)
    assert table["sigmoid"] is None


def test_later_overrides_win(table6: ModuleType) -> None:
    args = table6.parse_args(["--cls-set", "data.dataset=fashion-mnist-subset", "--epochs", "2",
                              "--set", "schedule.epochs=3"])
    task, variant = table6.TASKS["classification"], table6.VARIANTS["single-group"]
    assignments = table6.run_overrides(task, variant, 7, args, "name")
    config = table6.apply_overrides(table6.PRESETS[task.preset], assignments)
    assert config.data.dataset == "fashion-mnist-subset"
    assert config.schedule.epochs == 3 and config.seed == 7
    assert config.model.dcn_groups == 1
    segmentation = table6.run_overrides(table6.TASKS["segmentation"], variant, 0, args, "n")
    assert "data.dataset=fashion-mnist-subset" not in segmentation
