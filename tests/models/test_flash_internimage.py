"""FlashInternImage: upstream's golden case, the variants, upstream constructor arguments,
checkpoints in both upstream layouts, and the backbone API it shares with InternImage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import internimage
from internimage.errors import CheckpointFileError
from internimage.layers.dcnv4 import DCNv4
from internimage.models import CheckpointMismatchError, InternImageConfig, load_checkpoint
from internimage.models.flash_internimage import FlashInternImage, dense_backbone_arguments
from internimage.models.internimage import upstream_arguments
from internimage.ops import use_backend
from internimage.ops.geometry import dcnv4_columns


def _golden(golden_dir: Path) -> tuple[FlashInternImage, dict[str, torch.Tensor]]:
    cfg = json.loads((golden_dir / "flash_t_like.json").read_text())
    input_shape = cfg.pop("input_shape")
    model = FlashInternImage.from_upstream_config(cfg).eval()
    load_checkpoint(model, golden_dir / "flash_t_like.pth", strict=True)
    expected = load_file(str(golden_dir / "flash_t_like.safetensors"))
    assert list(expected["input"].shape) == input_shape
    return model, expected


def _close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    # The golden README's tolerance: 1e-4 x max(1, largest |value|), float32.
    bound = 1e-4 * max(1.0, float(expected.abs().max()))
    return actual.shape == expected.shape and float((actual - expected).abs().max()) <= bound


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_golden_outputs(golden_dir: Path, backend: str) -> None:
    model, expected = _golden(golden_dir)
    with torch.no_grad(), use_backend(backend):
        logits = model(expected["input"])
        stages = model.forward_intermediates(expected["input"])
        assert _close(logits, expected["logits"])
        for i, stage in enumerate(stages):
            assert _close(stage, expected[f"stage{i}"]), f"stage {i}"
        # The golden file's padding rows of offset_mask hold garbage; they are never read.
        dcn = model.levels[2].blocks[0].dcn
        assert dcn.offset_mask.out_features == 112 == dcnv4_columns(4, 9)
        assert float(dcn.offset_mask.weight[3 * 4 * 9:].abs().max()) > 1
        for module in model.modules():
            if isinstance(module, DCNv4):
                used = 3 * module.group * module.points
                module.offset_mask.weight[used:] = 0
                module.offset_mask.bias[used:] = 0
        assert torch.equal(model(expected["input"]), logits)


def test_a_strict_load_lists_the_keys_that_do_not_fit(golden_dir: Path) -> None:
    model, _ = _golden(golden_dir)
    state = torch.load(golden_dir / "flash_t_like.pth", weights_only=True)["model"]
    del state["levels.1.blocks.0.dcn.offset_mask.bias"]
    state["levels.1.blocks.0.mlp.fc2.bias"] = torch.zeros(32)
    state["head.weight"] = torch.zeros(3, 192)
    with pytest.raises(CheckpointMismatchError) as raised:
        load_checkpoint(model, {"model": state})
    message = str(raised.value)
    for fragment in ("levels.1.blocks.0.dcn.offset_mask.bias", "levels.1.blocks.0.mlp.fc2.bias",
                     "head.weight checkpoint [3, 192] vs model [10, 192]"):
        assert fragment in message


def test_the_variants_have_upstreams_sizes_and_keys() -> None:
    # Upstream's FlashInternImage T/S/B/L with 1000 classes (parameters, state-dict entries).
    expected = {"t": (29.82, 393), "s": (50.07, 553), "b": (97.45, 553), "l": (223.30, 691)}
    for size, (millions, keys) in expected.items():
        with torch.device("meta"):
            model = internimage.create_model(f"flash_internimage_{size}")
        assert isinstance(model, FlashInternImage)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        assert params == pytest.approx(millions, abs=0.01) and len(model.state_dict()) == keys
    t = internimage.models.VARIANTS["flash_internimage_t"].config
    assert (t.layer_scale, t.post_norm, t.dw_kernel_size, t.offset_scale) == (None, False, None,
                                                                              1.0)
    s_block = internimage.create_model("flash_internimage_atto").levels[0].blocks[0]
    assert isinstance(s_block.dcn, DCNv4) and s_block.mlp.fc2.bias is None
    assert s_block.dcn.output_proj.bias is None
    with torch.device("meta"):
        large = internimage.create_model("flash_internimage_l").levels[0].blocks[0]
    assert large.mlp.fc2.bias is not None and large.dcn.output_proj.bias is not None
    assert large.dcn.offset_mask_dw.weight.shape == (160, 1, 3, 3)


def test_upstream_arguments_round_trip_and_bad_ones_are_named() -> None:
    for name in ("flash_internimage_s", "flash_internimage_l", "flash_internimage_atto"):
        config = internimage.models.VARIANTS[name].config
        arguments = upstream_arguments(config)
        assert arguments["core_op"] == "DCNv4" and "remove_center" not in arguments
        with torch.device("meta"):
            rebuilt = FlashInternImage.from_upstream_config(arguments)
        assert rebuilt.config == config
    # Upstream's FlashInternImage defaults to offset_scale 0.5 and no extra biases.
    with torch.device("meta"):
        default = FlashInternImage.from_upstream_config({"channels": 16, "groups": [1, 2, 4, 8],
                                                         "depths": [1, 1, 1, 1]})
    assert default.config.offset_scale == 0.5 and not default.config.mlp_fc2_bias
    with pytest.raises(ValueError, match="unknown upstream FlashInternImage argument.*remove_"):
        FlashInternImage.from_upstream_config({"remove_center": True})
    with pytest.raises(ValueError, match="FlashInternImage needs core_op='DCNv4'"):
        FlashInternImage(internimage.models.VARIANTS["internimage_atto"].config)
    with pytest.raises(ValueError, match="center_feature_scale are not FlashInternImage"):
        InternImageConfig(16, (1, 1, 1, 1), (1, 2, 4, 8), core_op="DCNv4",
                          center_feature_scale=True)
    with pytest.raises(ValueError, match="InternImage's DCNv3 blocks always have both biases"):
        InternImageConfig(16, (1, 1, 1, 1), (1, 2, 4, 8), mlp_fc2_bias=False)
    with pytest.raises(ValueError, match="core_op must be one of"):
        InternImageConfig(16, (1, 1, 1, 1), (1, 2, 4, 8), core_op="DCNv5")


def test_dense_configs_name_the_family_in_their_type() -> None:
    arguments = dense_backbone_arguments(
        {"type": "FlashInternImage", "channels": 16, "out_indices": (0, 1, 2, 3)},
        ("type", "out_indices"))
    assert arguments == {"core_op": "DCNv4", "offset_scale": 0.5, "dcn_output_bias": False,
                         "mlp_fc2_bias": False, "channels": 16}
    assert dense_backbone_arguments({"type": "InternImage", "channels": 16}, ("type",)) == {
        "channels": 16}
    with pytest.raises(internimage.errors.ConfigError, match="'mlp_fc2_bias'.*for InternImage"):
        dense_backbone_arguments({"mlp_fc2_bias": True}, ())
    with pytest.raises(internimage.errors.ConfigError, match="backbone.type='ViT'"):
        dense_backbone_arguments({"type": "ViT"}, ("type",))


def test_checkpoints_in_both_upstream_layouts(tmp_path: Path) -> None:
    source = internimage.create_model("flash_internimage_atto", num_classes=5).eval()
    ema = internimage.create_model("flash_internimage_atto", num_classes=5).eval()
    with torch.no_grad():
        for p in (*source.parameters(), *ema.parameters()):
            p.add_(torch.randn_like(p) * 0.01)
    # Classification layout: weights under "model", the EMA copy under "model_ema".
    path = tmp_path / "flash_cls.pth"
    torch.save({"model": source.state_dict(), "model_ema": ema.state_dict(), "epoch": 3}, path)
    loaded = internimage.create_model("flash_internimage_atto", pretrained=path)
    assert loaded.num_classes == 5
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in loaded.state_dict().items())
    load_checkpoint(loaded, path, ema=True)
    assert all(torch.equal(v, ema.state_dict()[k]) for k, v in loaded.state_dict().items())
    with pytest.raises(CheckpointFileError, match="no 'model_ema' weights"):
        load_checkpoint(loaded, {"model": source.state_dict()}, ema=True)
    # Dense layout: the backbone under "backbone." beside the heads, in "state_dict".
    dense = tmp_path / "flash_dense.pth"
    heads = {"decode_head.conv_seg.weight": torch.zeros(3, 8, 1, 1)}
    backbone = {f"backbone.{k}": v for k, v in source.state_dict().items()
                if k.startswith(("patch_embed.", "levels."))}
    torch.save({"meta": {}, "state_dict": {**backbone, **heads}}, dense)
    features = internimage.create_model("flash_internimage_atto", features_only=True,
                                        pretrained=dense).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        maps = features(x)
        expected = source.forward_intermediates(x)
    assert [tuple(m.shape) for m in maps] == [(2, 16, 16, 24), (2, 32, 8, 12), (2, 64, 4, 6),
                                             (2, 128, 2, 3)]
    assert all(torch.equal(a, b) for a, b in zip(maps, expected, strict=True))


def test_a_small_flash_model_trains_a_step() -> None:
    model = internimage.create_model("flash_internimage_atto", num_classes=4, depths=(1, 1, 1, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 3])
    losses = []
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        losses.append(loss.item())
        # The offsets and point weights learn (their projection starts at zero).
        grad = model.levels[0].blocks[0].dcn.offset_mask.weight.grad
        assert grad is not None and float(grad.abs().max()) > 0
        optimizer.step()
    assert losses[1] < losses[0]
