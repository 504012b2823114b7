"""The DCNv3 module and the other building blocks against hand computations from the spec."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from internimage.layers import AttentionPooling, DCNv3, DropPath, Mlp
from internimage.layers.norm import layer_norm_nchw, layer_norm_nchw_to_nhwc, layer_norm_nhwc
from internimage.ops import dcnv3_reference


def _grid_average(values: torch.Tensor, dilation: int, remove_center: bool) -> torch.Tensor:
    """Mean of the 3x3 neighbourhood (zero padded) of an NHWC map, as a depthwise conv."""
    c = values.shape[-1]
    weight = torch.ones(c, 1, 3, 3, dtype=values.dtype)
    if remove_center:
        weight[:, :, 1, 1] = 0
    weight /= weight[0].sum()
    out = F.conv2d(
        values.permute(0, 3, 1, 2), weight, padding=dilation, dilation=dilation, groups=c
    )
    return out.permute(0, 2, 3, 1)


@pytest.mark.parametrize(
    ("offset_scale", "remove_center"), [(1.0, False), (2.0, False), (1.0, True)]
)
def test_initial_module_averages_the_base_grid(offset_scale: float, remove_center: bool) -> None:
    # At init offsets are 0 and the mask is uniform: DCNv3 reduces to a grid average whose
    # spacing is offset_scale (the L/XL setting dilates the kernel), without the centre if asked.
    module = DCNv3(8, 2, offset_scale=offset_scale, remove_center=remove_center).double()
    x = torch.randn(2, 7, 9, 8, dtype=torch.float64)
    expected = module.output_proj(
        _grid_average(module.input_proj(x), int(offset_scale), remove_center)
    )
    torch.testing.assert_close(module(x), expected, rtol=1e-9, atol=1e-9)


def test_keys_and_shapes() -> None:
    module = DCNv3(12, 3, dw_kernel_size=5, remove_center=True, center_feature_scale=True)
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert shapes["dw_conv.0.weight"] == (12, 1, 5, 5)
    assert shapes["dw_conv.1.1.weight"] == (12,)
    assert shapes["offset.weight"] == (3 * 8 * 2, 12)
    assert shapes["mask.weight"] == (3 * 8, 12)
    assert shapes["center_feature_scale_proj_weight"] == (3, 12)
    assert shapes["center_feature_scale_proj_bias"] == (3,)
    assert "center_feature_scale_proj_weight" not in DCNv3(12, 3).state_dict()


def test_init_follows_spec() -> None:
    module = DCNv3(16, 4)
    for name in ("offset", "mask"):
        assert torch.count_nonzero(getattr(module, name).weight) == 0
        assert torch.count_nonzero(getattr(module, name).bias) == 0
    assert torch.count_nonzero(module.input_proj.bias) == 0
    bound = (6 / (16 + 16)) ** 0.5  # xavier-uniform limit
    assert module.input_proj.weight.abs().max() <= bound
    assert module.input_proj.weight.std() > bound / 4


def test_forward_with_center_feature_scale_and_dw5_matches_hand_computation() -> None:
    torch.manual_seed(1)
    c, g = 8, 2
    module = DCNv3(c, g, dw_kernel_size=5, center_feature_scale=True).double()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(1, 6, 5, c, dtype=torch.float64)

    # Offset branch: depthwise 5x5 conv (padding 2) on the block input, LN over channels, GELU.
    conv = module.dw_conv[0]
    ln = module.dw_conv[1][1]
    x1 = F.conv2d(x.permute(0, 3, 1, 2), conv.weight, conv.bias, padding=2, groups=c)
    x1 = F.gelu(F.layer_norm(x1.permute(0, 2, 3, 1), (c,), ln.weight, ln.bias, eps=1e-6))
    offset = x1 @ module.offset.weight.T + module.offset.bias
    logits = (x1 @ module.mask.weight.T + module.mask.bias).reshape(1, 6, 5, g, 9)
    mask = (logits.exp() / logits.exp().sum(-1, keepdim=True)).reshape(1, 6, 5, g * 9)
    projected = x @ module.input_proj.weight.T + module.input_proj.bias
    sampled = dcnv3_reference(projected, offset, mask, group=g)
    gate = torch.sigmoid(
        x1 @ module.center_feature_scale_proj_weight.T + module.center_feature_scale_proj_bias
    )  # [N, H, W, G]
    gate = torch.stack([gate[..., ch // (c // g)] for ch in range(c)], dim=-1)
    blended = sampled * (1 - gate) + projected * gate
    expected = blended @ module.output_proj.weight.T + module.output_proj.bias
    torch.testing.assert_close(module(x), expected, rtol=1e-9, atol=1e-9)


def test_attention_pooling_matches_manual_multi_head_attention() -> None:
    torch.manual_seed(2)
    dim, heads, out_dim = 8, 2, 6
    pool = AttentionPooling(dim, heads, out_dim).double()
    with torch.no_grad():
        for p in pool.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    tokens = torch.randn(3, 5, dim, dtype=torch.float64)
    attn = pool.cross_dcn

    def ln(t: torch.Tensor, seq: torch.nn.Sequential) -> torch.Tensor:
        return F.layer_norm(t, (dim,), seq[0].weight, seq[0].bias, eps=1e-6)

    q = ln(tokens.mean(1, keepdim=True), pool.norm1_q) @ attn.q.weight.T + attn.q_bias
    k = ln(tokens, pool.norm1_k) @ attn.k.weight.T + attn.k_bias
    v = ln(tokens, pool.norm1_v) @ attn.v.weight.T + attn.v_bias
    outs = []
    hd = dim // heads
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        scores = q[..., sl] @ k[..., sl].transpose(1, 2) / hd**0.5  # [B, 1, L]
        outs.append(scores.softmax(-1) @ v[..., sl])
    expected = (torch.cat(outs, -1) @ attn.proj.weight.T + attn.proj.bias).squeeze(1)
    torch.testing.assert_close(pool(tokens), expected, rtol=1e-9, atol=1e-9)
    assert set(pool.state_dict()) >= {"norm1_q.0.weight", "cross_dcn.q_bias", "cross_dcn.v.weight"}
    assert attn.q.bias is None


def test_drop_path_is_per_sample_and_identity_in_eval() -> None:
    layer = DropPath(0.5)
    x = torch.ones(2000, 3)
    y = layer(x)
    rows = y[:, 0]
    assert set(rows.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(y, rows[:, None].expand_as(y))  # whole sample kept or dropped
    assert 0.4 < (rows == 0).float().mean() < 0.6
    layer.eval()
    assert torch.equal(layer(x), x)
    with pytest.raises(ValueError, match="drop_prob"):
        DropPath(1.0)


def test_norm_wrappers_layouts_and_keys() -> None:
    x = torch.randn(2, 4, 3, 5)  # NCHW
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (4,), eps=1e-6)
    torch.testing.assert_close(layer_norm_nchw_to_nhwc(4)(x), expected)
    torch.testing.assert_close(layer_norm_nchw(4)(x), expected.permute(0, 3, 1, 2))
    torch.testing.assert_close(layer_norm_nhwc(4)(x.permute(0, 2, 3, 1)), expected)
    assert "1.weight" in layer_norm_nchw(4).state_dict()
    assert "0.weight" in layer_norm_nhwc(4).state_dict()


def test_mlp_shapes() -> None:
    mlp = Mlp(6, 24)
    assert mlp(torch.randn(2, 3, 3, 6)).shape == (2, 3, 3, 6)
    assert mlp.fc1.out_features == 24


def test_softmax_over_points_matches_softmax_with_exact_gradients() -> None:
    from internimage.layers.dcnv3 import softmax_over_points

    logits = torch.randn(2, 5, 7, 3, 9) * 4.0
    logits[0, 0, 0, 0] = torch.tensor([1e4, -1e4, 3.0, 0.0, 1e4, 2.0, 5.0, -3.0, 1.0])
    with torch.no_grad():
        fast = softmax_over_points(logits)
    torch.testing.assert_close(fast, F.softmax(logits, dim=-1), rtol=1e-6, atol=1e-7)
    assert torch.isfinite(fast).all()
    # The exp and divide run on a fresh tensor, never on the caller's logits.
    before = logits.clone()
    softmax_over_points(logits)
    assert torch.equal(logits, before)
    leaf = logits.clone().requires_grad_(True)
    out = softmax_over_points(leaf)
    grad = torch.randn_like(out)
    (expected_grad,) = torch.autograd.grad(F.softmax(leaf, dim=-1), leaf, grad)
    (actual_grad,) = torch.autograd.grad(out, leaf, grad)
    torch.testing.assert_close(actual_grad, expected_grad)
    # First and second derivatives in float64.
    small = torch.randn(2, 3, 2, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(softmax_over_points, (small,))
    assert torch.autograd.gradgradcheck(softmax_over_points, (small,))


def test_softmax_over_points_half_precision_uses_library_softmax() -> None:
    from internimage.layers.dcnv3 import softmax_over_points

    logits = torch.randn(2, 4, 4, 2, 9).bfloat16()
    torch.testing.assert_close(softmax_over_points(logits), F.softmax(logits, dim=-1),
                               rtol=0, atol=0)
