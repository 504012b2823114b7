"""Variant table against the spec (meta device), scaling rules and small-variant training."""

from __future__ import annotations

import pytest
import torch

import internimage
from internimage.models import (
    VARIANTS,
    InternImage,
    count_macs,
    create_model,
    scaled_config,
    stacking_config,
)
from internimage.models.macs import count_macs_by_hooks

# name: (params, state_dict entries, GMACs at the image size), from SPEC-upstream.md section 4.
SPEC_TABLE = {
    "internimage_t": (29.92e6, 633, 4.89),
    "internimage_s": (50.08e6, 751, 8.31),
    "internimage_b": (97.46e6, 751, 16.18),
    "internimage_l": (223.33e6, 839, 107.8),
    "internimage_xl": (334.82e6, 883, 162.9),
    "internimage_h": (1089.64e6, 1357, 1492.8),
    "internimage_g": (3076.37e6, 1295, 2711.1),
}
SPEC_IMAGE_SIZE = {"internimage_t": 224, "internimage_s": 224, "internimage_b": 224,
                   "internimage_l": 384, "internimage_xl": 384, "internimage_h": 640,
                   "internimage_g": 512}


def _meta_model(name: str, **kwargs: object) -> torch.nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


@pytest.mark.parametrize("name", list(SPEC_TABLE))
def test_released_variant_matches_spec(name: str) -> None:
    params, entries, gmacs = SPEC_TABLE[name]
    model = _meta_model(name)
    assert all(p.is_meta for p in model.parameters())
    count = sum(p.numel() for p in model.parameters())
    # The spec rounds to 10k parameters.
    assert abs(count - params) < 5e3, count
    assert len(model.state_dict()) == entries
    size = SPEC_IMAGE_SIZE[name]
    assert VARIANTS[name].image_size == size
    macs = count_macs(model, (1, 3, size, size))
    assert abs(macs / 1e9 - gmacs) / gmacs < 0.01, macs


def test_key_names_and_shapes_follow_upstream() -> None:
    t = _meta_model("internimage_t").state_dict()
    for key in ("patch_embed.conv1.weight", "patch_embed.norm1.1.weight",
                "patch_embed.norm2.1.bias", "levels.0.blocks.0.norm1.0.weight",
                "levels.0.blocks.0.dcn.dw_conv.1.1.weight", "levels.1.norm.0.weight",
                "levels.0.downsample.norm.1.weight", "conv_head.1.0.running_var",
                "conv_head.1.0.num_batches_tracked", "head.weight"):
        assert key in t, key
    assert tuple(t["levels.0.downsample.conv.weight"].shape) == (128, 64, 3, 3)
    assert "levels.0.downsample.conv.bias" not in t
    assert "levels.3.downsample.conv.weight" not in t
    assert tuple(t["conv_head.0.weight"].shape) == (768, 512, 1, 1)
    assert tuple(t["levels.2.blocks.0.dcn.offset.weight"].shape) == (16 * 9 * 2, 256)

    s = _meta_model("internimage_s").state_dict()
    assert "levels.0.blocks.0.gamma1" in s and "levels.3.blocks.3.gamma2" in s
    assert not any(k.startswith("levels.0.norm.") for k in s)  # post-norm: no stage norm

    h = _meta_model("internimage_h").state_dict()
    assert tuple(h["levels.0.blocks.0.dcn.dw_conv.0.weight"].shape) == (320, 1, 5, 5)
    assert tuple(h["levels.0.blocks.0.dcn.center_feature_scale_proj_weight"].shape) == (10, 320)
    assert "levels.2.post_norms.4.0.weight" in h and "levels.2.post_norms.5.0.weight" not in h
    assert "levels.1.blocks.0.res_post_norm2.0.bias" in h
    assert tuple(h["dcnv3_head_x4.0.weight"].shape) == (4096, 2560, 1, 1)
    assert tuple(h["dcnv3_head_x3.weight"].shape) == (1024, 1280, 1, 1)
    assert tuple(h["clip_projector.cross_dcn.proj.weight"].shape) == (768, 1024)
    assert "clip_projector.cross_dcn.q_bias" in h and "clip_projector.norm1_v.0.weight" in h
    assert tuple(h["fc_norm.0.weight"].shape) == (768,) and "conv_head.0.weight" not in h

    g = _meta_model("internimage_g").state_dict()
    assert "levels.2.post_norms.7.0.weight" in g
    assert "levels.3.norm.0.weight" in g  # post-norm, but centre feature scale keeps it
    assert not any("res_post_norm" in k for k in g)

    lg = _meta_model("internimage_l")
    assert lg.levels[0].blocks[0].dcn.offset_scale == 2.0


def test_hook_count_agrees_with_closed_form() -> None:
    for name, size in (("internimage_t", 224), ("internimage_h", 128)):
        model = _meta_model(name)
        assert count_macs_by_hooks(model, (2, 3, size, size)) == count_macs(
            model, (2, 3, size, size)
        )
    features = _meta_model("internimage_atto", features_only=True, out_indices=(1,))
    assert count_macs_by_hooks(features, (1, 3, 64, 96)) == count_macs(features, (1, 3, 64, 96))


def test_stacking_and_scaling_rules() -> None:
    config = stacking_config(64, 16, 4, 18)
    t = VARIANTS["internimage_t"].config
    assert (config.channels, config.depths, config.groups) == (t.channels, t.depths, t.groups)
    with pytest.raises(ValueError, match="L1 <= L3"):
        stacking_config(64, 16, 5, 4)
    with pytest.raises(ValueError, match="multiple"):
        stacking_config(60, 16, 2, 4)
    same = scaled_config(0)
    assert (same.channels, same.depths, same.groups) == (t.channels, t.depths, t.groups)
    # One step up: D' = 1.09 * 30 = 32.7 -> 33, C1' = 1.36 * 64 = 87 -> 80 (multiple of 16).
    up = scaled_config(1)
    assert up.channels == 80 and sum(up.depths) == 33
    assert up.depths[0] == up.depths[1] == up.depths[3] <= up.depths[2]


def test_small_variants_grow_and_follow_rules() -> None:
    names = ["internimage_atto", "internimage_femto", "internimage_pico", "internimage_nano"]
    assert internimage.list_models()[:4] == names
    sizes = []
    for name in names:
        config = VARIANTS[name].config
        assert config.depths[0] == config.depths[1] == config.depths[3] <= config.depths[2]
        assert all(
            c // g == config.channels // config.groups[0]
            for c, g in zip(config.stage_channels, config.groups, strict=True)
        )
        sizes.append(sum(p.numel() for p in _meta_model(name).parameters()))
    assert sizes == sorted(sizes) and sizes[0] < 3e6
    assert set(internimage.list_models(pretrained=True)) == set(SPEC_TABLE) | {
        f"flash_internimage_{k}" for k in "tsbl"}
    # FlashInternImage's small variants are InternImage's with DCNv4 blocks.
    for name in names:
        flash = VARIANTS[f"flash_{name}"].config
        assert flash.replace(core_op="DCNv3", dcn_output_bias=True, mlp_fc2_bias=True) == (
            VARIANTS[name].config)


@pytest.mark.parametrize("name", ["internimage_atto", "internimage_femto"])
def test_small_variant_trains(name: str) -> None:
    model = create_model(name, num_classes=7, drop_path_rate=0.1)
    x = torch.randn(2, 3, 64, 32)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    # Offsets and masks start at zero but must learn.
    assert model.levels[0].blocks[0].dcn.offset.weight.grad.abs().sum() > 0


def test_grad_checkpointing_gives_same_output_and_grads() -> None:
    model = InternImage(stacking_config(16, 8, 1, 2), num_classes=5)
    x = torch.randn(2, 3, 32, 32)

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        torch.manual_seed(3)
        out = model(x)
        out.sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain_out, plain_grads = run()
    model.set_grad_checkpointing(True)
    assert all(level.grad_checkpointing for level in model.levels)
    ckpt_out, ckpt_grads = run()
    torch.testing.assert_close(ckpt_out, plain_out)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=1e-5, atol=1e-6)


def test_unknown_override_names_itself_and_valid_ones() -> None:
    with pytest.raises(ValueError, match="'layerscale'") as info:
        create_model("internimage_atto", layerscale=1e-5)
    assert "layer_scale" in str(info.value) and "drop_path_rate" in str(info.value)
    with pytest.raises(ValueError, match="unknown model"):
        create_model("internimage_zz")
    model = create_model(
        "internimage_atto", layer_scale=1e-5, remove_center=True, offset_scale=2.0
    )
    assert model.config.layer_scale == 1e-5
    assert model.levels[0].blocks[0].dcn.points == 8
    assert model.levels[1].blocks[0].gamma1.detach().eq(1e-5).all()


def test_drop_path_rates_are_linear_over_all_blocks() -> None:
    model = create_model("internimage_atto", drop_path_rate=0.3)
    rates = [b.drop_path.drop_prob for level in model.levels for b in level.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    steps = torch.tensor(rates).diff()
    torch.testing.assert_close(steps, torch.full_like(steps, 0.3 / (len(rates) - 1)))
