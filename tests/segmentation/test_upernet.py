"""UperNet over InternImage: upstream's mmseg checkpoints (golden case), strict loading, presets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from catalog_rows import add_release, tiny_release
from hub_cache import hub_snapshot, offline_hub

pytest.importorskip("transformers", reason="the seg extra is not installed")

from safetensors.torch import load_file  # noqa: E402

from internimage.catalog import RELEASES, list_pretrained  # noqa: E402
from internimage.errors import ConfigError, UsageError, WeightsUnavailableError  # noqa: E402
from internimage.models import CheckpointMismatchError  # noqa: E402
from internimage.ops import use_backend  # noqa: E402
from internimage.segmentation import (  # noqa: E402
    create_segmentation_model,
    from_mmseg,
    upernet_from_mmseg_config,
)

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


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_upstream_flash_internimage_checkpoint_reproduces_mmseg(
    golden_dir: Path, backend: str
) -> None:
    config = json.loads((golden_dir / "upernet_flash_t_like.json").read_text())
    model_cfg = {k: config[k] for k in PARTS}
    # Upstream's dense configs name the family of the backbone.
    model_cfg["backbone"] = {"type": "FlashInternImage", **model_cfg["backbone"]}
    model = from_mmseg(golden_dir / "upernet_flash_t_like.pth", model_cfg)
    assert model.config.backbone_config.core_op == "DCNv4"
    expected = load_file(str(golden_dir / "upernet_flash_t_like.safetensors"))
    x = expected["input"]
    with use_backend(backend), torch.no_grad():
        out = model(x)
        features = model.backbone(x).feature_maps
        aux = model.auxiliary_head(features)
        decode = model.decode_head(features)
    for name, got in [("seg_logits", out.logits), ("aux_logits", aux), ("decode_logits", decode),
                      *[(f"stage{i}", f) for i, f in enumerate(features)]]:
        want = expected[name]
        scale = max(1.0, float(want.abs().max()))
        assert got.shape == want.shape and (got - want).abs().max() <= 1e-4 * scale, name


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
    # Upstream's README: UperNet T/S/B/L/XL/H 59M, 80M, 128M, 256M, 368M, 1.12B parameters.
    published = {"t": 59, "s": 80, "b": 128, "l": 256, "xl": 368, "h": 1120}  # millions
    names = list_pretrained(family="internimage", method="upernet", classes="ade20k")
    assert [RELEASES[n].variant for n in names] == [f"internimage_{k}" for k in published]
    for name, (key, millions) in zip(names, published.items(), strict=True):
        with torch.device("meta"):
            model = create_segmentation_model(name)
            # The name used before the catalogue, and the file name, build the same model.
            for alias in (f"upernet_internimage_{key}_ade20k", RELEASES[name].file):
                assert create_segmentation_model(alias).config.to_dict() == model.config.to_dict()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        assert params == pytest.approx(millions, rel=0.01), key
        assert model.config.num_labels == 150


def test_other_tasks_and_unbuilt_models_are_refused_by_name() -> None:
    with pytest.raises(UsageError, match="internimage_t_1k_224 is a classification model"):
        create_segmentation_model("internimage_t_1k_224")
    with pytest.raises(UsageError, match=r"a SegFormer model \(backbone InternImage-L\), "
                                         r"which this library cannot build yet"):
        create_segmentation_model("segformer_internimage_l_512x1024_80k_mapillary")
    with pytest.raises(UsageError, match="no released checkpoint is called 'upernet_x'"):
        create_segmentation_model("upernet_x")
    with pytest.raises(UsageError, match="150 outputs, not 19"):
        create_segmentation_model("upernet_internimage_t_512x1024_160k_cityscapes",
                                  pretrained=True, num_classes=19)


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


@pytest.mark.parametrize("hub_repo", ["OpenGVLab/InternImage", "OpenGVLab/DCNv4"])
def test_released_weights_load_from_the_hub_cache_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_repo: str
) -> None:
    tiny = tiny_release("tiny_upernet_ade20k", like="upernet_internimage_t_512_160k_ade20k",
                        hub_repo=hub_repo, layer_scale=1.0)
    add_release(monkeypatch, tiny)
    source = create_segmentation_model(tiny.name).eval()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    cache = tmp_path / "hub"
    offline_hub(monkeypatch, cache)
    with pytest.raises(WeightsUnavailableError,
                       match=rf"tiny_upernet_ade20k\.pth of {hub_repo}.*Hugging Face cache"):
        create_segmentation_model(tiny.name, pretrained=True)

    snapshot = hub_snapshot(cache, repo=hub_repo)
    torch.save({"meta": {}, "state_dict": _mmseg_keys(source.state_dict())},
               snapshot / tiny.file)
    loaded = create_segmentation_model(tiny.file, pretrained=True)
    assert not loaded.training
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, source(x).logits)
    local = create_segmentation_model(tiny.name, pretrained=snapshot / tiny.file)
    with torch.no_grad():
        assert torch.equal(local(x).logits, source(x).logits)
