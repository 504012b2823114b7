"""Block, stage and head semantics of the spec, checked by hand on tiny configurations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from internimage.models import InternImage, InternImageConfig
from internimage.models.internimage import Block, Stage

C = 8


def _perturbed(module: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    torch.manual_seed(5)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    return module.double().eval()


def _config(**settings: object) -> InternImageConfig:
    return InternImageConfig(channels=C, depths=(1, 1, 3, 1), groups=(1, 2, 4, 8), **settings)


def _ln(seq: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    norm = seq[0]
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, eps=1e-6)


@pytest.mark.parametrize(
    ("settings", "form"),
    [
        ({}, "pre"),
        ({"post_norm": True}, "post"),
        ({"res_post_norm": True}, "res_post"),
        ({"post_norm": True, "res_post_norm": True}, "post"),  # post_norm wins
        ({"layer_scale": 0.5}, "pre_scaled"),
        ({"layer_scale": 0.5, "res_post_norm": True}, "pre_scaled"),  # ignored with layer scale
        ({"layer_scale": 0.5, "post_norm": True}, "post_scaled"),
    ],
)
def test_block_normalisation_forms(settings: dict, form: str) -> None:
    block = _perturbed(Block(C, 2, _config(**settings), drop_path=0.0))
    x = torch.randn(2, 4, 5, C, dtype=torch.float64)
    dcn, mlp = block.dcn, block.mlp
    if form == "pre":
        y = x + dcn(_ln(block.norm1, x))
        y = y + mlp(_ln(block.norm2, y))
    elif form == "post":
        y = x + _ln(block.norm1, dcn(x))
        y = y + _ln(block.norm2, mlp(y))
    elif form == "res_post":
        y = x + _ln(block.res_post_norm1, dcn(_ln(block.norm1, x)))
        y = y + _ln(block.res_post_norm2, mlp(_ln(block.norm2, y)))
    elif form == "pre_scaled":
        y = x + block.gamma1 * dcn(_ln(block.norm1, x))
        y = y + block.gamma2 * mlp(_ln(block.norm2, y))
    else:
        y = x + block.gamma1 * _ln(block.norm1, dcn(x))
        y = y + block.gamma2 * _ln(block.norm2, mlp(y))
    torch.testing.assert_close(block(x), y, rtol=1e-10, atol=1e-10)
    keys = block.state_dict()
    assert ("res_post_norm1.0.weight" in keys) == bool(settings.get("res_post_norm"))
    assert ("gamma1" in keys) == ("layer_scale" in settings)


def test_level2_post_norms_and_stage_norm() -> None:
    config = _config(level2_post_norm=True, level2_post_norm_block_ids=(0, 2))
    model = InternImage(config, num_classes=3)
    keys = model.state_dict()
    assert "levels.2.post_norms.0.0.weight" in keys and "levels.2.post_norms.1.0.bias" in keys
    assert not any(k.startswith(("levels.1.post_norms", "levels.3.post_norms")) for k in keys)
    stage = _perturbed(model.levels[2])
    x = torch.randn(1, 3, 2, 4 * C, dtype=torch.float64)
    y = stage.post_norms[0](stage.blocks[0](x))
    y = stage.post_norms[1](stage.blocks[2](stage.blocks[1](y)))
    y = stage.norm(y)
    out, down = stage(x)
    torch.testing.assert_close(out, y)
    assert down.shape == (1, 2, 1, 8 * C)
    with pytest.raises(ValueError, match="outside"):
        _config(level2_post_norm=True, level2_post_norm_block_ids=(3,))


@pytest.mark.parametrize(
    ("settings", "has_norm"),
    [({}, True), ({"post_norm": True}, False),
     ({"post_norm": True, "center_feature_scale": True}, True)],
)
def test_stage_norm_presence(settings: dict, has_norm: bool) -> None:
    stage = Stage(C, 1, 1, _config(**settings), [0.0], None, downsample=True)
    assert (stage.norm is not None) == has_norm
    assert ("norm.0.weight" in stage.state_dict()) == has_norm
    assert "downsample.conv.bias" not in stage.state_dict()


def test_clip_attention_pooling_head_by_hand() -> None:
    config = _config(use_clip_projector=True, center_feature_scale=True, dw_kernel_size=5)
    model = _perturbed(InternImage(config, num_classes=4), scale=0.05)
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        s2, s3 = model.forward_intermediates(x, indices=(2, 3))
        conv4 = model.dcnv3_head_x4[0]
        up = F.pixel_shuffle(F.conv2d(s3, conv4.weight, conv4.bias), 2)  # to stride 16
        fused = up + F.conv2d(s2, model.dcnv3_head_x3.weight, model.dcnv3_head_x3.bias)
        tokens = fused.flatten(2).transpose(1, 2)  # [B, L, 1024]
        pool = model.clip_projector
        attn = pool.cross_dcn
        q = _ln(pool.norm1_q, tokens.mean(1, keepdim=True)) @ attn.q.weight.T + attn.q_bias
        k = _ln(pool.norm1_k, tokens) @ attn.k.weight.T + attn.k_bias
        v = _ln(pool.norm1_v, tokens) @ attn.v.weight.T + attn.v_bias
        heads = lambda t: t.unflatten(-1, (16, 64)).transpose(1, 2)  # noqa: E731
        pooled = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
        pooled = pooled.transpose(1, 2).flatten(2).squeeze(1) @ attn.proj.weight.T + attn.proj.bias
        logits = _ln(model.fc_norm, pooled) @ model.head.weight.T + model.head.bias
        torch.testing.assert_close(model(x), logits, rtol=1e-9, atol=1e-9)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 768)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, 64, 80, dtype=torch.float64))


def test_conv_head_runs_before_pooling() -> None:
    model = _perturbed(InternImage(_config(), num_classes=4))
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        last = model.forward_intermediates(x, indices=(3,))[0]
        assert torch.equal(model.forward_features(x), last)
        bn = model.conv_head[1][0]
        h = F.conv2d(last, model.conv_head[0].weight)
        h = F.gelu(F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=1e-5))
        logits = h.mean((2, 3)) @ model.head.weight.T + model.head.bias
        torch.testing.assert_close(model(x), logits, rtol=1e-9, atol=1e-9)
