"""``benchmarks/ablation_fig4.py`` on tiny settings: its files and its parameter numbers."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from internimage.models import VARIANTS
from script_loading import load_benchmark


@pytest.fixture(scope="module")
def fig4() -> ModuleType:
    """The script loaded as a module."""
    return load_benchmark("ablation_fig4.py")


def _formula(name: str) -> int:
    config = VARIANTS[name].config
    return sum(d * 8 * c * c for d, c in zip(config.depths, config.stage_channels, strict=True))


def test_counts_parameters_and_writes_the_files(fig4: ModuleType, tmp_path: Path) -> None:
    record = fig4.main(
        ["--variants", "t", "--memory-variants", "", "--image-size", "32",
         "--output-dir", str(tmp_path)]
    )
    for suffix in ("json", "md", "png"):
        assert (tmp_path / f"ablation_fig4.{suffix}").stat().st_size > 0
    (row,) = record["params"]
    assert row["variant"] == "internimage_t"
    # InternImage-T: 29.9M parameters with shared weights.
    assert 29.0e6 < row["params_shared"] < 31.0e6
    assert row["params_unshared"] - row["params_shared"] == _formula("internimage_t")
    assert row["params_delta_formula"] == row["params_delta"]
    assert row["macs_unshared"] > row["macs_shared"]
    stored = json.loads((tmp_path / "ablation_fig4.json").read_text())
    assert stored["params"] == record["params"] and stored["memory"] == []
    text = (tmp_path / "ablation_fig4.md").read_text()
    assert "| T | 29.92 | 48.40 |" in text and "versions:" in text and "machine:" in text
    assert (tmp_path / "ablation_fig4.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_child_measures_a_training_step(
    fig4: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    # What each measuring process runs, here in-process (cheap: atto at 32 px).
    fig4.child("internimage_atto", "unshared", True, 2, 32, "reference")
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["maxrss_bytes"] > 50e6 and result["step_s"] > 0
    assert result["backend"] == "reference"


def test_memory_is_the_step_peak_minus_the_baseline_peak(
    fig4: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake(name: str, weights: str, measure: bool, *args: object) -> dict[str, object]:
        base = 1_000 if weights == "shared" else 2_000
        return {"maxrss_bytes": base + (500 if measure else 0) * (1 + (weights == "unshared")),
                "step_s": 1.0 if measure else None, "backend": "numba"}

    monkeypatch.setattr(fig4, "_run_child", fake)
    row = fig4.measure_memory("internimage_t", 2, 224, "auto")
    assert row["memory_bytes_shared"] == 500 and row["memory_bytes_unshared"] == 1_000
    assert row["memory_ratio"] == 2.0
    assert row["backend_shared"] == "numba" and row["backend_unshared"] == "pure torch"


@pytest.mark.slow
def test_measures_memory_in_fresh_processes(fig4: ModuleType, tmp_path: Path) -> None:
    record = fig4.main(
        ["--variants", "atto", "--memory-variants", "atto", "--batch", "2", "--image-size",
         "32", "--output-dir", str(tmp_path)]
    )
    (row,) = record["memory"]
    assert row["variant"] == "internimage_atto" and row["backend_unshared"] == "pure torch"
    assert row["backend_shared"] in ("numba", "reference")
    for weights in ("shared", "unshared"):
        # Peak RSS of a process that imported torch and built a model: well above 50 MB.
        assert row[f"step_maxrss_bytes_{weights}"] > 50e6
        assert row[f"step_s_{weights}"] >= 0
    assert "Training-step peak memory" in (tmp_path / "ablation_fig4.md").read_text()


def test_unknown_variant_raises(fig4: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown variant 'q'"):
        fig4.main(["--variants", "q", "--memory-variants", "", "--output-dir", str(tmp_path)])
