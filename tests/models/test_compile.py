"""``torch.compile`` of whole models: one graph (no break), the same numbers as eager."""

from __future__ import annotations

import pytest
import torch

from internimage.models import create_model
from internimage.ops import use_backend


def _small(**overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("internimage_atto", depths=(1, 1, 2, 1), num_classes=10, **overrides)


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_fullgraph_forward_and_backward_equal_eager(backend: str) -> None:
    # aot_eager traces with dynamo and AOT autograd (the operator's fake and backward
    # registrations) without generating code: it checks the capture the inductor compiles.
    model = _small(layer_scale=1.0, post_norm=True)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    with use_backend(backend):
        eager = model(x)
        (grad_eager,) = torch.autograd.grad(eager.square().sum(), x)
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False)
        out = compiled(x)
        (grad,) = torch.autograd.grad(out.square().sum(), x)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, grad_eager, rtol=1e-4, atol=1e-5)


def test_features_only_backbone_compiles_as_one_graph() -> None:
    torch.manual_seed(0)
    backbone = create_model("internimage_atto", depths=(1, 1, 1, 1), features_only=True).eval()
    x = torch.randn(1, 3, 64, 64)
    compiled = torch.compile(backbone, backend="aot_eager", fullgraph=True)
    with torch.inference_mode():
        for got, want in zip(compiled(x), backbone(x), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_inductor_code_equals_eager() -> None:
    model = _small().eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)
