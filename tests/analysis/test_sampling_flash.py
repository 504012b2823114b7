"""Sampling-location maps of FlashInternImage's DCNv4 blocks: the packed offsets and the point
weights as given, checked against what the operator computed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import internimage
from internimage.analysis import render_sampling_maps, sampling_locations
from internimage.layers.dcnv4 import DCNv4

HEIGHT, WIDTH = 40, 72
QUERIES = [(0.0, 0.0), (71.0, 39.0), (33.4, 17.8)]


def _bilinear(plane: np.ndarray, x: float, y: float) -> np.ndarray:
    """plane [H, W, D] at (x, y), zero outside, integer coordinates at pixel centres."""
    h, w = plane.shape[:2]
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    total = np.zeros(plane.shape[2])
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                total += wy * wx * plane[yy, xx]
    return total


def test_dcnv4_maps_reproduce_what_the_operator_computed() -> None:
    model = internimage.create_model("flash_internimage_atto", depths=(1, 1, 1, 1),
                                     dw_kernel_size=3).eval()
    for module in model.modules():
        if isinstance(module, DCNv4):
            torch.nn.init.normal_(module.offset_mask.weight, std=0.5)
    values, cores, handles = {}, {}, []
    for s, level in enumerate(model.levels):
        dcn = level.blocks[0].dcn
        handles.append(dcn.value_proj.register_forward_hook(
            lambda mod, args, out, key=s: values.__setitem__(key, out[0].double())))
        handles.append(dcn.output_proj.register_forward_pre_hook(
            lambda mod, args, key=s: cores.__setitem__(key, args[0][0].double())))
    maps = sampling_locations(model, torch.randn(3, HEIGHT, WIDTH), QUERIES)
    for handle in handles:
        handle.remove()
    assert [m.stage for m in maps] == [0, 1, 2, 3]
    negative = 0
    for m in maps:
        assert m.mask_normalization == "none" and m.points == 9
        plane, core = values[m.stage].numpy(), cores[m.stage].numpy()
        d = plane.shape[2] // m.groups
        feature = m.locations / m.stride
        for q in range(len(QUERIES)):
            col, row = m.feature_pixels[q]
            for g in range(m.groups):
                total = sum(m.weights[q, g, p] * _bilinear(plane[:, :, g * d:(g + 1) * d],
                                                           *feature[q, g, p])
                            for p in range(m.points))
                np.testing.assert_allclose(total, core[row, col, g * d:(g + 1) * d],
                                           rtol=1e-4, atol=1e-5)
        negative += int((m.weights < 0).any())
    # The weights are not normalised: some are negative and the groups do not sum to 1.
    assert negative > 0
    assert not np.allclose(maps[0].weights.sum(axis=-1), 1.0)


def test_dcnv4_maps_draw() -> None:
    pytest.importorskip("matplotlib")
    model = internimage.create_model("flash_internimage_atto", depths=(1, 1, 1, 1)).eval()
    maps = sampling_locations(model, torch.randn(3, HEIGHT, WIDTH), QUERIES[:1])
    png = render_sampling_maps(np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8), maps)
    assert png.startswith(b"\x89PNG")
