"""Upstream golden cases: strict load of upstream checkpoints and identical outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from internimage.models import InternImage, load_checkpoint
from internimage.ops import use_backend


def _build(golden_dir: Path, case: str) -> tuple[InternImage, dict[str, torch.Tensor]]:
    cfg = json.loads((golden_dir / f"{case}.json").read_text())
    # input_shape describes the stored input; it is not a constructor argument.
    input_shape = cfg.pop("input_shape")
    model = InternImage.from_upstream_config(cfg).eval()
    load_checkpoint(model, golden_dir / f"{case}.pth", strict=True)
    expected = load_file(str(golden_dir / f"{case}.safetensors"))
    assert list(expected["input"].shape) == input_shape
    return model, expected


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("case", ["t_like", "s_like"])
def test_golden_outputs(golden_dir: Path, case: str, backend: str) -> None:
    model, expected = _build(golden_dir, case)
    with torch.no_grad(), use_backend(backend):
        logits = model(expected["input"])
        stages = model.forward_intermediates(expected["input"])
    assert (logits - expected["logits"]).abs().max() <= 1e-4
    assert len(stages) == 4
    for i, stage in enumerate(stages):
        assert stage.shape == expected[f"stage{i}"].shape
        assert (stage - expected[f"stage{i}"]).abs().max() <= 1e-4, f"stage {i}"


def test_golden_config_keys_are_strict(golden_dir: Path) -> None:
    cfg = json.loads((golden_dir / "t_like.json").read_text())
    with pytest.raises(ValueError, match="input_shape"):
        InternImage.from_upstream_config(cfg)
