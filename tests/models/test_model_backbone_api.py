"""Backbone API: upstream config import, features, freezing, classifier reset, param groups."""

from __future__ import annotations

import pytest
import torch

from internimage.models import InternImage, InternImageFeatures, create_model
from internimage.models.internimage import UPSTREAM_DEFAULTS

NAME = "internimage_atto"


def test_from_upstream_config_defaults_and_errors() -> None:
    model = InternImage.from_upstream_config(
        {"channels": 16, "depths": [1, 1, 2, 1], "groups": [1, 2, 4, 8], "num_classes": 3,
         "with_cp": True, "core_op": "DCNv3_pytorch"}
    )
    assert model.num_classes == 3
    assert model.config.depths == (1, 1, 2, 1)
    assert model.config.drop_path_rate == UPSTREAM_DEFAULTS["drop_path_rate"] == 0.2
    assert model.config.mlp_ratio == 4.0 and model.config.layer_scale is None
    assert all(level.grad_checkpointing for level in model.levels)
    # Upstream's own defaults (64 channels, 3 groups) do not divide: a clear error, as upstream.
    with pytest.raises(ValueError, match="divisible"):
        InternImage.from_upstream_config({})
    with pytest.raises(ValueError, match="'colour'"):
        InternImage.from_upstream_config({"colour": 1})
    with pytest.raises(ValueError, match="norm_layer"):
        InternImage.from_upstream_config({"norm_layer": "BN"})


def test_forward_intermediates_and_feature_info() -> None:
    model = create_model(NAME).eval()
    x = torch.randn(1, 3, 64, 96)
    maps = model.forward_intermediates(x)
    assert [m.shape for m in maps] == [
        (1, info["num_chs"], 64 // info["reduction"], 96 // info["reduction"])
        for info in model.feature_info
    ]
    assert [info["module"] for info in model.feature_info] == [f"levels.{i}" for i in range(4)]
    assert [info["reduction"] for info in model.feature_info] == [4, 8, 16, 32]
    assert model.feature_info[0]["num_chs"] == model.config.channels

    features = create_model(NAME, features_only=True, out_indices=(3, 1))
    assert isinstance(features, InternImageFeatures)
    missing, unexpected = features.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith(("conv_head", "head")) for k in unexpected)
    features.eval()
    with torch.no_grad():
        outs = features(x)
    assert [o.shape[1] for o in outs] == [f["num_chs"] for f in features.feature_info]
    assert [f["reduction"] for f in features.feature_info] == [32, 8]
    torch.testing.assert_close(outs[0], maps[3])
    torch.testing.assert_close(outs[1], maps[1])
    assert not any(k.startswith(("head", "conv_head")) for k in features.state_dict())
    with pytest.raises(ValueError, match="0..3"):
        create_model(NAME, features_only=True, out_indices=(4,))


def test_frozen_stages() -> None:
    model = create_model(NAME, num_classes=3, drop_path_rate=0.2)
    model.freeze_stages(1)
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    assert not any(p.requires_grad for p in model.levels[0].parameters())
    assert all(p.requires_grad for p in model.levels[1].parameters())
    model.train()
    assert not model.levels[0].training and not model.levels[0].blocks[0].drop_path.training
    assert not model.patch_embed.training and model.levels[1].training
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.levels[0].blocks[0].mlp.fc1.weight.grad is None
    assert model.levels[1].blocks[0].mlp.fc1.weight.grad is not None
    frozen = {id(p) for p in model.levels[0].parameters()}
    grouped = {id(p) for g in model.param_groups(0.05) for p in g["params"]}
    assert not frozen & grouped
    model.freeze_stages(-1)
    assert all(p.requires_grad for p in model.parameters())
    model.frozen_stages = 0  # the attribute form freezes too
    assert model.frozen_stages == 0 and not model.patch_embed.conv1.weight.requires_grad
    assert model.levels[0].blocks[0].norm1[0].weight.requires_grad
    with pytest.raises(ValueError, match="-1..4"):
        model.freeze_stages(5)


def test_reset_classifier_and_pre_logits() -> None:
    model = create_model(NAME).eval()
    x = torch.randn(2, 3, 32, 32)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.get_classifier().out_features == 5
    pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    assert pooled.shape == (2, model.num_features)
    model.reset_classifier(0)
    torch.testing.assert_close(model(x), pooled)


def test_param_groups() -> None:
    model = create_model(NAME)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = model.param_groups(0.05)
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(names)  # every parameter exactly once
    for group in groups:
        assert set(group) == {"params", "weight_decay", "lr_scale"} and group["lr_scale"] == 1.0
        for p in group["params"]:
            no_decay = p.ndim <= 1 or names[id(p)].endswith(".bias")
            assert group["weight_decay"] == (0.0 if no_decay else 0.05), names[id(p)]

    decay = 0.8
    depth = sum(model.config.depths)
    scales = {names[id(p)]: g["lr_scale"] for g in model.param_groups(0.05, layer_decay=decay)
              for p in g["params"]}
    assert scales["patch_embed.conv1.weight"] == pytest.approx(decay ** (depth + 1))
    assert scales["head.weight"] == 1.0 and scales["conv_head.0.weight"] == 1.0
    assert scales["levels.0.blocks.0.dcn.offset.weight"] == pytest.approx(decay**depth)
    last = f"levels.3.blocks.{model.config.depths[3] - 1}.mlp.fc2.weight"
    assert scales[last] == pytest.approx(decay)
    assert scales["levels.0.downsample.conv.weight"] == scales[
        f"levels.0.blocks.{model.config.depths[0] - 1}.norm1.0.weight"
    ]
    block_scales = [scales[f"levels.{i}.blocks.{b}.norm2.0.weight"]
                    for i, d in enumerate(model.config.depths) for b in range(d)]
    assert block_scales == sorted(block_scales) and len(set(block_scales)) == depth
    with pytest.raises(ValueError, match="layer_decay"):
        model.param_groups(0.05, layer_decay=1.5)


def test_construction_on_meta_does_not_allocate() -> None:
    with torch.device("meta"):
        model = create_model("internimage_g", features_only=True)
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) > 2e9
