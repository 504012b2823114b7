"""The DCNv3 ablation options (unshared weights, sigmoid point weights, group count) against
naive computations written from the definitions, in float64 on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

import internimage.layers.dcnv3 as dcnv3_module
from internimage.layers.dcnv3 import DCNv3, PointProjection, point_terms
from internimage.ops import available_backends, dcnv3_reference, use_backend
from internimage.ops.geometry import DCNv3Geometry

needs_numba = pytest.mark.skipif(
    "numba" not in available_backends(), reason="the numba backend is not installed"
)


def _randomise(module: DCNv3, std: float = 0.3) -> DCNv3:
    """Non-trivial weights everywhere (the init has zero offsets and uniform point weights)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * std)
    return module


def _bilinear(plane: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Zero-padded bilinear sample of ``plane [H, W, D]`` at one (y, x) (scalar tensors)."""
    h, w, d = plane.shape
    y0, x0 = math.floor(y.item()), math.floor(x.item())
    out = plane.new_zeros(d)
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            if 0 <= yy < h and 0 <= xx < w:
                weight = (1 - (y - yy).abs()) * (1 - (x - xx).abs())
                out = out + weight * plane[yy, xx]
    return out


def _naive_dcnv3(module: DCNv3, inp: torch.Tensor) -> torch.Tensor:
    """The module's output from the definitions, one output pixel, group and point at a time.

    Shared: ``W (sum_p m_p x(p_p)) + b``; unshared: ``sum_p W_p (m_p x(p_p)) + b``. The point
    weights are softmax over a group's points or sigmoid per point. Stride 1, pad (k-1)/2,
    dilation 1, no centre feature scale.
    """
    n, h, w, c = inp.shape
    g, k = module.group, module.kernel_size
    d = c // g
    grid = [(i - k // 2, j - k // 2) for i in range(k) for j in range(k)]  # (dx, dy), x outer
    if module.remove_center:
        grid.remove((0, 0))
    p = len(grid)
    scale = module.offset_scale
    x = inp @ module.input_proj.weight.T + module.input_proj.bias
    x1 = module.dw_conv(inp.permute(0, 3, 1, 2))  # the offset branch is not under test
    offset = (x1 @ module.offset.weight.T + module.offset.bias).reshape(n, h, w, g, p, 2)
    logits = (x1 @ module.mask.weight.T + module.mask.bias).reshape(n, h, w, g, p)
    if module.mask_normalization == "softmax":
        weights = logits.exp() / logits.exp().sum(dim=-1, keepdim=True)
    else:
        weights = 1 / (1 + (-logits).exp())
    rows = []
    for b in range(n):
        for yo in range(h):
            for xo in range(w):
                # terms[q] is point q's weighted sample, all groups concatenated: [C]
                terms = []
                for q, (dx, dy) in enumerate(grid):
                    parts = []
                    for gi in range(g):
                        px = xo + (dx + offset[b, yo, xo, gi, q, 0]) * scale
                        py = yo + (dy + offset[b, yo, xo, gi, q, 1]) * scale
                        plane = x[b, :, :, gi * d : (gi + 1) * d]
                        parts.append(weights[b, yo, xo, gi, q] * _bilinear(plane, py, px))
                    terms.append(torch.cat(parts))
                proj = module.output_proj
                if isinstance(proj, PointProjection):
                    out = sum(proj.weight[q] @ terms[q] for q in range(p)) + proj.bias
                else:
                    out = proj.weight @ sum(terms) + proj.bias
                rows.append(out)
    return torch.stack(rows).reshape(n, h, w, c)


@pytest.mark.parametrize(
    ("options", "remove_center"),
    [
        ({"weight_sharing": "unshared"}, False),
        ({"weight_sharing": "unshared"}, True),
        ({"mask_normalization": "sigmoid"}, False),
        ({"weight_sharing": "unshared", "mask_normalization": "sigmoid"}, False),
        ({}, False),
    ],
)
def test_forward_matches_naive_computation(options: dict[str, str], remove_center: bool) -> None:
    module = _randomise(DCNv3(4, 2, remove_center=remove_center, **options).double())
    inp = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    with use_backend("reference"):
        out = module(inp)
    torch.testing.assert_close(out, _naive_dcnv3(module, inp), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mask_normalization", ["softmax", "sigmoid"])
def test_unshared_gradients_match_naive_autograd(mask_normalization: str) -> None:
    module = _randomise(
        DCNv3(4, 2, weight_sharing="unshared", mask_normalization=mask_normalization).double()
    )
    inp = torch.randn(1, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(1, 3, 3, 4, dtype=torch.float64)

    def gradients(forward: object) -> list[torch.Tensor]:
        module.zero_grad()
        inp.grad = None
        (forward(module, inp) * probe).sum().backward()  # type: ignore[operator]
        return [inp.grad.clone(), *(p.grad.clone() for p in module.parameters())]

    with use_backend("reference"):
        fast = gradients(lambda m, x: m(x))
    naive = gradients(_naive_dcnv3)
    names = ["input", *(name for name, _ in module.named_parameters())]
    for name, a, b in zip(names, fast, naive, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=name)


def test_point_terms_gradcheck_and_sum_is_the_operator() -> None:
    geometry = DCNv3Geometry(3, 1, 1, 1, 2, 1.0, False)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    # Offsets away from whole pixels: bilinear sampling has kinks there.
    offset = (0.1 + 0.8 * torch.rand(1, 3, 4, 36, dtype=torch.float64, generator=generator))
    offset.requires_grad_(True)
    mask = torch.rand(1, 3, 4, 18, dtype=torch.float64, generator=generator, requires_grad=True)
    terms = point_terms(x, offset, mask, geometry)
    assert terms.shape == (1, 3, 4, 9, 4)
    expected = dcnv3_reference(x, offset, mask, group=2)
    torch.testing.assert_close(terms.sum(dim=3), expected, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda a, b, c: point_terms(a, b, c, geometry), (x, offset, mask)
    )


@pytest.mark.parametrize("center_feature_scale", [False, True])
def test_unshared_with_equal_point_weights_is_the_shared_module(
    center_feature_scale: bool,
) -> None:
    # sum_p W (m_p x_p) = W sum_p m_p x_p: with every W_p equal to the shared matrix the two
    # modules agree, also with the centre-feature-scale gate (spread evenly over the points).
    shared = _randomise(DCNv3(8, 2, center_feature_scale=center_feature_scale).double())
    unshared = DCNv3(
        8, 2, center_feature_scale=center_feature_scale, weight_sharing="unshared"
    ).double()
    state = shared.state_dict()
    state["output_proj.weight"] = state["output_proj.weight"].expand(9, 8, 8).clone()
    unshared.load_state_dict(state)
    inp = torch.randn(2, 4, 5, 8, dtype=torch.float64)
    with use_backend("reference"):
        torch.testing.assert_close(unshared(inp), shared(inp), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("channels", "group", "remove_center"), [(8, 2, False), (12, 3, True)])
def test_unshared_parameter_delta(channels: int, group: int, remove_center: bool) -> None:
    points = 9 - int(remove_center)

    def count(weight_sharing: str) -> int:
        module = DCNv3(
            channels, group, remove_center=remove_center, weight_sharing=weight_sharing
        )
        return sum(p.numel() for p in module.parameters())

    assert count("unshared") - count("shared") == (points - 1) * channels * channels
    shapes = {
        k: tuple(v.shape)
        for k, v in DCNv3(
            channels, group, remove_center=remove_center, weight_sharing="unshared"
        ).state_dict().items()
    }
    assert shapes["output_proj.weight"] == (points, channels, channels)
    assert shapes["output_proj.bias"] == (channels,)
    assert set(shapes) == set(DCNv3(channels, group, remove_center=remove_center).state_dict())


def test_unshared_init_is_xavier_per_point() -> None:
    module = DCNv3(16, 4, weight_sharing="unshared")
    weight = module.output_proj.weight
    bound = (6 / (16 + 16)) ** 0.5
    assert weight.abs().max() <= bound and weight.abs().max() > 0.8 * bound
    assert torch.count_nonzero(module.output_proj.bias) == 0
    # The points start different from each other (no shared initial matrix).
    assert not torch.equal(weight[0], weight[1])


def _captured_mask(
    module: DCNv3, inp: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> torch.Tensor:
    """The point weights the module hands to the operator."""
    seen = []

    def spy(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, **geometry: object):
        seen.append(mask.detach())
        return dcnv3_reference(x, offset, mask, **geometry)  # type: ignore[arg-type]

    monkeypatch.setattr(dcnv3_module, "dcnv3", spy)
    module(inp)
    return seen[0].reshape(*seen[0].shape[:3], module.group, module.points)


def test_softmax_weights_sum_to_one_and_sigmoid_ones_do_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inp = torch.randn(1, 4, 4, 8, dtype=torch.float64)
    softmax = _randomise(DCNv3(8, 2).double())
    sigmoid = _randomise(DCNv3(8, 2, mask_normalization="sigmoid").double())
    assert softmax.mask_normalization == "softmax" and sigmoid.mask_normalization == "sigmoid"
    sums = _captured_mask(softmax, inp, monkeypatch).sum(dim=-1)
    torch.testing.assert_close(sums, torch.ones_like(sums))
    weights = _captured_mask(sigmoid, inp, monkeypatch)
    assert ((weights > 0) & (weights < 1)).all()
    assert (weights.sum(dim=-1) - 1).abs().min() > 1e-3
    # Sigmoid of the same logits, point by point.
    logits = sigmoid.mask(sigmoid.dw_conv(inp.permute(0, 3, 1, 2))).reshape(weights.shape)
    torch.testing.assert_close(weights, torch.sigmoid(logits))


def test_sigmoid_at_init_scales_the_grid_average() -> None:
    # Zero offsets and zero mask weights: softmax gives 1/P per point, sigmoid gives 1/2, so the
    # sigmoid module's aggregate is P/2 times the softmax one (before output_proj).
    softmax = DCNv3(8, 2).double()
    sigmoid = DCNv3(8, 2, mask_normalization="sigmoid").double()
    sigmoid.load_state_dict(softmax.state_dict())
    for module in (softmax, sigmoid):
        torch.nn.init.zeros_(module.output_proj.bias)
    inp = torch.randn(1, 5, 5, 8, dtype=torch.float64)
    with use_backend("reference"):
        torch.testing.assert_close(sigmoid(inp), softmax(inp) * 9 / 2, rtol=1e-10, atol=1e-10)


def test_group_count_sets_the_offset_and_mask_widths() -> None:
    one = DCNv3(8, 1)
    assert one.offset.out_features == 9 * 2 and one.mask.out_features == 9
    four = DCNv3(8, 4)
    assert four.offset.out_features == 4 * 9 * 2 and four.mask.out_features == 4 * 9


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"weight_sharing": "per-point"}, "weight_sharing must be one of"),
        ({"mask_normalization": "relu"}, "mask_normalization must be one of"),
    ],
)
def test_invalid_options_raise(options: dict[str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DCNv3(8, 2, **options)  # type: ignore[arg-type]


def test_extra_repr_names_the_options() -> None:
    text = repr(DCNv3(8, 2, weight_sharing="unshared", mask_normalization="sigmoid"))
    assert "weight_sharing=unshared" in text and "mask_normalization=sigmoid" in text
    assert "PointProjection(points=9, in_features=8, out_features=8)" in text


def _forward_backward(module: DCNv3, inp: torch.Tensor) -> list[torch.Tensor]:
    module.zero_grad()
    leaf = inp.clone().requires_grad_(True)
    out = module(leaf)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    return [out.detach(), leaf.grad, *(p.grad for p in module.parameters())]


@needs_numba
@pytest.mark.parametrize(
    ("group", "options"),
    [(2, {"mask_normalization": "sigmoid"}), (1, {}), (1, {"mask_normalization": "sigmoid"})],
)
def test_numba_backend_runs_sigmoid_and_single_group(group: int, options: dict[str, str]) -> None:
    module = _randomise(DCNv3(8, group, **options), std=0.2)
    inp = torch.randn(2, 5, 6, 8)
    with use_backend("numba"):
        fast = _forward_backward(module, inp)
    with use_backend("reference"):
        slow = _forward_backward(module, inp)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "backend", ["reference", pytest.param("numba", marks=needs_numba)]
)
def test_unshared_runs_the_pure_torch_sampling_under_any_backend(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _randomise(DCNv3(8, 2, weight_sharing="unshared"), std=0.2)

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the unshared module must not call the fused operator")

    monkeypatch.setattr(dcnv3_module, "dcnv3", fail)
    inp = torch.randn(2, 5, 6, 8)
    with use_backend(backend):
        out, grad, *param_grads = _forward_backward(module, inp)
    assert out.shape == (2, 5, 6, 8) and grad.shape == inp.shape
    assert all(g is not None and torch.isfinite(g).all() for g in param_grads)
    assert module.output_proj.weight.grad.shape == (9, 8, 8)


def test_meta_tensors_keep_shapes() -> None:
    with torch.device("meta"):
        module = DCNv3(8, 2, weight_sharing="unshared", center_feature_scale=True)
        out = module(torch.empty(2, 5, 6, 8))
    assert out.is_meta and out.shape == (2, 5, 6, 8)
