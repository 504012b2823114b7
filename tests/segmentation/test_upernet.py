"""UperNet over InternImage: upstream's mmseg checkpoints (golden case), strict loading, presets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hub_cache import hub_snapshot, offline_hub

pytest.importorskip("transformers", reason="the seg extra is not installed")

from safetensors.torch import load_file  # noqa: E402

from internimage.errors import ConfigError, WeightsUnavailableError  # noqa: E402
from internimage.models import CheckpointMismatchError  # noqa: E402
from internimage.ops import use_backend  # noqa: E402
from internimage.segmentation import (  # noqa: E402
    ADE20K_MODELS,
    SegmentationWeights,
    create_segmentation_model,
    from_mmseg,
    upernet_from_mmseg_config,
)
from internimage.segmentation import pretrained as seg_pretrained  # noqa: E402

PARTS = ("backbone", "decode_head", "auxiliary_head")


def _golden(golden_dir: Path) -> tuple[dict, Path, dict[str, torch.Tensor]]:
    config = json.loads((golden_dir / "upernet_t_like.json").read_text())
    return ({k: config[k] for k in PARTS}, golden_dir / "upernet_t_like.pth",
            load_file(str(golden_dir / "upernet_t_like.safetensors")))


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_upstream_mmseg_checkpoint_reproduces_mmseg(golden_dir: Path, backend: str) -> None:
    model_cfg, checkpoint, expected = _golden(golden_dir)
    model = from_mmseg(checkpoint, model_cfg)
    assert not model.training
    x = expected["input"]
    with use_backend(backend), torch.no_grad():
        out = model(x)
        features = model.backbone(x).feature_maps
        aux = model.auxiliary_head(features)
    assert out.logits.shape == (x.shape[0], 7, x.shape[2], x.shape[3])
    for name, got in [("seg_logits", out.logits), ("aux_logits", aux),
                      *[(f"stage{i}", f) for i, f in enumerate(features)]]:
        want = expected[name]
        scale = max(1.0, float(want.abs().max()))
        assert (got - want).abs().max() <= 1e-4 * scale, name


def test_a_checkpoint_that_does_not_fit_lists_the_keys(golden_dir: Path) -> None:
    model_cfg, checkpoint, _ = _golden(golden_dir)
    state = dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    del state["decode_head.fpn_bottleneck.bn.running_var"]
    state["decode_head.extra.weight"] = torch.zeros(1)
    state["auxiliary_head.conv_seg.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointMismatchError) as info:
        from_mmseg({"state_dict": state}, model_cfg)
    message = str(info.value)
    assert "decode_head.fpn_bottleneck.batch_norm.running_var" in message
    assert "decode_head.extra.weight" in message
    assert "auxiliary_head.classifier.bias checkpoint [3] vs model [7]" in message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"decode_head": {"num_classes": 7, "lr": 1}}, "'lr'"),
        ({"decode_head": {"num_classes": 7, "in_index": [1, 2, 3]}}, "in_index"),
        ({"decode_head": {"num_classes": 7, "align_corners": True}}, "align_corners"),
        ({"auxiliary_head": {"in_index": 1, "num_classes": 7}}, "in_index"),
        ({"neck": {}}, "'neck'"),
        ({"backbone": {"colour": 1}}, "'colour'"),
    ],
)
def test_configs_transformers_cannot_express_are_refused(
    golden_dir: Path, change: dict, message: str
) -> None:
    model_cfg, _, _ = _golden(golden_dir)
    with pytest.raises(ConfigError, match=message):
        upernet_from_mmseg_config({**model_cfg, **change})


def test_the_released_models_have_the_published_sizes() -> None:
    published = {"t": 59, "s": 80, "b": 128, "l": 256, "xl": 368, "h": 1120}  # millions
    assert set(ADE20K_MODELS) == {f"upernet_internimage_{k}_ade20k" for k in published}
    for key, millions in published.items():
        with torch.device("meta"):
            model = create_segmentation_model(f"upernet_internimage_{key}_ade20k")
        params = sum(p.numel() for p in model.parameters()) / 1e6
        assert params == pytest.approx(millions, rel=0.01), key
        assert model.config.num_labels == 150


def _mmseg_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This project's UperNet keys back to mmseg's (the inverse of the conversion)."""
    out = {}
    for key, value in state.items():
        if key.startswith("backbone.model."):
            key = "backbone." + key[len("backbone.model."):]
        else:
            key = key.replace(".batch_norm.", ".bn.").replace(".classifier.", ".conv_seg.")
        out[key] = value
    return out


def test_released_weights_load_from_the_hub_cache_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = SegmentationWeights("tiny_ade20k", "internimage_atto", "tiny_ade20k.pth", 64,
                               (0.0, 0.0), (("depths", [1, 1, 1, 1]), ("layer_scale", 1.0)),
                               head_channels=16, auxiliary_channels=8)
    monkeypatch.setitem(ADE20K_MODELS, tiny.name, tiny)
    source = create_segmentation_model(tiny.name).eval()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    cache = tmp_path / "hub"
    offline_hub(monkeypatch, cache)
    with pytest.raises(WeightsUnavailableError, match=r"tiny_ade20k\.pth.*Hugging Face cache"):
        create_segmentation_model(tiny.name, pretrained=True)

    snapshot = hub_snapshot(cache)
    torch.save({"meta": {}, "state_dict": _mmseg_keys(source.state_dict())},
               snapshot / tiny.file_name)
    loaded = create_segmentation_model(tiny.name, pretrained=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, source(x).logits)
    local = create_segmentation_model(tiny.name, pretrained=snapshot / tiny.file_name)
    with torch.no_grad():
        assert torch.equal(local(x).logits, source(x).logits)
    assert seg_pretrained.ADE20K_MODELS is ADE20K_MODELS
