"""Sampling-location maps against hand computations of the operator's formula, and their PNG."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import internimage
from internimage import InternImage, InternImageConfig, InternImageFeatures
from internimage.analysis import (
    SamplingMap,
    feature_to_input,
    input_to_feature,
    render_sampling_maps,
    sampling_locations,
    save_sampling_maps,
)
from internimage.errors import MissingDependencyError
from internimage.layers.dcnv3 import DCNv3
from internimage.layers.dcnv4 import DCNv4
from internimage.ops.geometry import DCNv3Geometry

HEIGHT, WIDTH = 40, 72  # not square and not a multiple of 32, so feature sizes round up
# Query pixels (x, y): corners, a fractional one, one near the middle.
QUERIES = [(0.0, 0.0), (71.0, 39.0), (33.4, 17.8), (40.0, 9.0)]


def _tiny(**config: object) -> InternImage:
    """Width 8, one block per stage except two in stage 2 (so "last" has a choice)."""
    settings: dict[str, object] = {"channels": 8, "depths": (1, 1, 2, 1), "groups": (1, 2, 2, 4)}
    settings.update(config)
    return InternImage(InternImageConfig(**settings), num_classes=3)


def _dcn(model: InternImage, stage: int, block: int) -> DCNv3:
    return model.levels[stage].blocks[block].dcn


def _feature_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """Each stride-2 conv (k 3, pad 1) gives ceil(n / 2): twice in the stem, once per stage."""
    sizes = []
    h, w = -(-height // 4), -(-width // 4)
    for _ in range(4):
        sizes.append((h, w))
        h, w = -(-h // 2), -(-w // 2)
    return sizes


def _set_known(model: InternImage, seed: int = 1) -> dict[tuple[int, int], tuple]:
    """Zero the offset and mask projections' weights and give them random biases, different
    in every block: the offsets (dx, dy) and mask logits are then the same at every pixel."""
    rng = np.random.default_rng(seed)
    known = {}
    for s, level in enumerate(model.levels):
        for b, block in enumerate(level.blocks):
            dcn = block.dcn
            g, p = dcn.group, dcn.points
            offsets = rng.uniform(-0.9, 0.9, size=(g, p, 2))
            logits = rng.uniform(-2.0, 2.0, size=(g, p))
            with torch.no_grad():
                dcn.offset.weight.zero_()
                dcn.offset.bias.copy_(torch.from_numpy(offsets.reshape(-1)))
                dcn.mask.weight.zero_()
                dcn.mask.bias.copy_(torch.from_numpy(logits.reshape(-1)))
            known[(s, b)] = (offsets, logits)
    return known


def _hand_map(
    query: tuple[float, float], stage: int, size: tuple[int, int], offsets: np.ndarray,
    offset_scale: float, remove_center: bool, alignment: str,
) -> np.ndarray:
    """[G, P, 2] input-pixel sampling locations, from the operator's formula written out:
    x = wo*stride - pad + half + (bx + dx)*offset_scale (and y likewise), kernel point p = i*k + j
    with i along x (outer) and j along y (inner), the centre dropped with remove_center,
    clamped to [-2, size + 1] like the operator, then feature -> input pixels."""
    fh, fw = size
    stride = 4 * 2**stage
    qx, qy = query
    if alignment == "cell":
        col = min(int(np.floor((qx + 0.5) / stride)), fw - 1)
        row = min(int(np.floor((qy + 0.5) / stride)), fh - 1)
    else:
        col = min(int(np.floor(qx / stride + 0.5)), fw - 1)
        row = min(int(np.floor(qy / stride + 0.5)), fh - 1)
    k, op_stride, pad, dilation = 3, 1, 1, 1
    half = dilation * (k - 1) // 2
    grid = [(i * dilation - half, j * dilation - half) for i in range(k) for j in range(k)
            if not (remove_center and i == k // 2 and j == k // 2)]
    g = offsets.shape[0]
    out = np.zeros((g, len(grid), 2))
    for gi in range(g):
        for p, (bx, by) in enumerate(grid):
            xf = col * op_stride - pad + half + (bx + offsets[gi, p, 0]) * offset_scale
            yf = row * op_stride - pad + half + (by + offsets[gi, p, 1]) * offset_scale
            xf, yf = min(max(xf, -2.0), fw + 1.0), min(max(yf, -2.0), fh + 1.0)
            if alignment == "cell":
                out[gi, p] = ((xf + 0.5) * stride - 0.5, (yf + 0.5) * stride - 0.5)
            else:
                out[gi, p] = (xf * stride, yf * stride)
    return out


@pytest.mark.parametrize(
    ("offset_scale", "remove_center", "alignment"),
    [(1.0, False, "cell"), (2.0, True, "cell"), (0.5, False, "conv"), (1.5, True, "conv")],
)
def test_locations_and_weights_follow_the_operator_formula(
    offset_scale: float, remove_center: bool, alignment: str
) -> None:
    model = _tiny(offset_scale=offset_scale, remove_center=remove_center)
    known = _set_known(model)
    image = torch.randn(3, HEIGHT, WIDTH)
    maps = sampling_locations(model, image, QUERIES, alignment=alignment)
    sizes = _feature_sizes(HEIGHT, WIDTH)
    # Default: the last block of every stage.
    assert [(m.stage, m.block) for m in maps] == [(0, 0), (1, 0), (2, 1), (3, 0)]
    points = 8 if remove_center else 9
    for m in maps:
        offsets, logits = known[(m.stage, m.block)]
        g = offsets.shape[0]
        assert m.stride == 4 * 2**m.stage and m.feature_size == sizes[m.stage]
        assert m.image_size == (HEIGHT, WIDTH) and m.alignment == alignment
        assert (m.groups, m.points) == (g, points)
        assert m.locations.shape == (len(QUERIES), g, points, 2)
        assert m.weights.shape == (len(QUERIES), g, points)
        assert m.geometry.offset_scale == offset_scale and m.geometry.remove_center is remove_center
        expected_weights = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        for q, query in enumerate(QUERIES):
            want = _hand_map(query, m.stage, sizes[m.stage], offsets, offset_scale,
                             remove_center, alignment)
            np.testing.assert_allclose(m.locations[q], want, rtol=0, atol=1e-5)
            np.testing.assert_allclose(m.weights[q], expected_weights, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m.weights.sum(axis=-1), 1.0, atol=1e-6)


def test_kernel_grid_order_is_the_one_written_out() -> None:
    # The hand formula's grid above is the operator's: x outer, y inner, centre dropped.
    assert DCNv3Geometry(3, remove_center=False).kernel_grid() == [
        (-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1)]
    assert (0, 0) not in DCNv3Geometry(3, remove_center=True).kernel_grid()


def test_query_maps_to_the_feature_pixel_containing_it() -> None:
    model = _tiny()
    _set_known(model)
    maps = sampling_locations(model, torch.randn(3, HEIGHT, WIDTH), QUERIES, alignment="cell")
    stage1 = maps[1]  # stride 8, 5 x 9 feature pixels
    assert stage1.feature_pixels.tolist() == [[0, 0], [8, 4], [4, 2], [5, 1]]
    np.testing.assert_array_equal(stage1.queries, np.asarray(QUERIES))
    # Pixel 7 is the last one of cell 0 at stride 8, pixel 8 the first of cell 1.
    assert input_to_feature(np.array([7.0, 8.0]), 8, 9, "cell").tolist() == [0, 1]
    # The default ("conv"): the nearest centre x_f * 8.
    assert input_to_feature(np.array([3.9, 4.0]), 8, 9).tolist() == [0, 1]
    assert input_to_feature(np.array([500.0]), 8, 9).tolist() == [8]  # clipped to the map
    assert feature_to_input(0.0, 4, "cell").item() == 1.5 and feature_to_input(1.0, 4) == 4.0


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


def test_maps_reproduce_what_the_operator_computed() -> None:
    # Offsets that vary from pixel to pixel; the maps' points and weights, sampled by hand from
    # the values DCNv3 samples, must give the operator's output at the query's feature pixel.
    model = _tiny()
    for module in model.modules():
        if isinstance(module, DCNv3):
            torch.nn.init.normal_(module.offset.weight, std=0.5)
            torch.nn.init.normal_(module.mask.weight, std=0.5)
    values, cores, handles = {}, {}, []
    for s, level in enumerate(model.levels):
        for b, block in enumerate(level.blocks):
            dcn = block.dcn
            handles.append(dcn.input_proj.register_forward_hook(
                lambda mod, args, out, key=(s, b): values.__setitem__(key, out[0].double())))
            handles.append(dcn.output_proj.register_forward_pre_hook(
                lambda mod, args, key=(s, b): cores.__setitem__(key, args[0][0].double())))
    maps = sampling_locations(model, torch.randn(3, HEIGHT, WIDTH), QUERIES, blocks="all")
    for handle in handles:
        handle.remove()
    assert [(m.stage, m.block) for m in maps] == [(0, 0), (1, 0), (2, 0), (2, 1), (3, 0)]
    moved = 0
    for m in maps:
        plane = values[(m.stage, m.block)].numpy()  # [Hs, Ws, C]
        core = cores[(m.stage, m.block)].numpy()
        d = plane.shape[2] // m.groups
        feature = m.locations / m.stride  # back to feature pixels (the default alignment)
        for q in range(len(QUERIES)):
            col, row = m.feature_pixels[q]
            for g in range(m.groups):
                group_plane = plane[:, :, g * d:(g + 1) * d]
                total = sum(m.weights[q, g, p] * _bilinear(group_plane, *feature[q, g, p])
                            for p in range(m.points))
                np.testing.assert_allclose(total, core[row, col, g * d:(g + 1) * d],
                                           rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(m.weights.sum(axis=-1), 1.0, atol=1e-6)
        base = np.array(m.geometry.kernel_grid(), dtype=np.float64)
        moved += int(np.abs(feature - feature[..., 4:5, :] - base).max() > 0.05)
    assert moved == len(maps)  # the offsets really moved the points off the regular grid


def test_mask_normalization_attribute_is_honoured() -> None:
    model = _tiny()
    known = _set_known(model)
    for module in model.modules():
        if isinstance(module, DCNv3):
            module.mask_normalization = "sigmoid"
    maps = sampling_locations(model, torch.randn(3, HEIGHT, WIDTH), QUERIES[:2])
    for m in maps:
        _, logits = known[(m.stage, m.block)]
        assert m.mask_normalization == "sigmoid"
        np.testing.assert_allclose(m.weights[1], 1 / (1 + np.exp(-logits)), rtol=1e-5)
    _dcn(model, 0, 0).mask_normalization = "tanh"
    with pytest.raises(ValueError, match="tanh"):
        sampling_locations(model, torch.randn(3, HEIGHT, WIDTH), QUERIES[:1])


def test_features_only_backbone_gives_the_classifiers_maps() -> None:
    model = _tiny()
    _set_known(model)
    image = torch.randn(1, 3, HEIGHT, WIDTH)
    full = sampling_locations(model, image, QUERIES)
    backbone = InternImageFeatures(model, out_indices=(1, 0))
    maps = sampling_locations(backbone, image, QUERIES)  # stages 0..1, all it computes
    assert [m.stage for m in maps] == [0, 1]
    for mine, theirs in zip(maps, full[:2], strict=True):
        np.testing.assert_array_equal(mine.locations, theirs.locations)
        np.testing.assert_array_equal(mine.weights, theirs.weights)
    with pytest.raises(ValueError, match="stage 2 did not run"):
        sampling_locations(backbone, image, QUERIES, stages=[2])


def test_block_and_stage_selection() -> None:
    model = _tiny()
    _set_known(model)
    image = torch.randn(3, HEIGHT, WIDTH)
    maps = sampling_locations(model, image, QUERIES[:1], stages=[2, 0], blocks=[0])
    assert [(m.stage, m.block) for m in maps] == [(0, 0), (2, 0)]
    maps = sampling_locations(model, image, QUERIES[:1], stages=[2], blocks=[-1, 0])
    assert [(m.stage, m.block) for m in maps] == [(2, 0), (2, 1)]
    with pytest.raises(ValueError, match="block 2 does not exist"):
        sampling_locations(model, image, QUERIES[:1], stages=[2], blocks=[2])
    with pytest.raises(ValueError, match="stages"):
        sampling_locations(model, image, QUERIES[:1], stages=[4])
    with pytest.raises(ValueError, match="blocks"):
        sampling_locations(model, image, QUERIES[:1], blocks="first")


def test_modes_are_restored_and_the_model_runs_in_eval_mode() -> None:
    model = _tiny(drop_rate=0.5)
    _set_known(model)
    model.train()
    model.levels[1].eval()
    before = [module.training for module in model.modules()]
    image = torch.randn(3, HEIGHT, WIDTH)
    # Dropout after the stem would change the offsets from call to call if it were active.
    for module in model.modules():
        if isinstance(module, DCNv3):
            torch.nn.init.normal_(module.offset.weight, std=0.5)
    a = sampling_locations(model, image, QUERIES)
    assert [module.training for module in model.modules()] == before
    b = sampling_locations(model, image, QUERIES)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.locations, y.locations)


def test_bad_inputs_are_refused() -> None:
    model = _tiny()
    image = torch.randn(3, HEIGHT, WIDTH)
    with pytest.raises(ValueError, match=r"outside the 72x40 image"):
        sampling_locations(model, image, [(72.0, 3.0)])
    with pytest.raises(ValueError, match=r"\[Q, 2\]"):
        sampling_locations(model, image, [(1.0, 2.0, 3.0)])
    with pytest.raises(ValueError, match="one normalised RGB image"):
        sampling_locations(model, torch.randn(2, 3, HEIGHT, WIDTH), QUERIES)
    with pytest.raises(TypeError, match="float"):
        sampling_locations(model, torch.zeros(3, HEIGHT, WIDTH, dtype=torch.uint8), QUERIES)
    with pytest.raises(TypeError, match="InternImage"):
        sampling_locations(torch.nn.Linear(2, 2), image, QUERIES)
    with pytest.raises(ValueError, match="alignment"):
        sampling_locations(model, image, QUERIES, alignment="centre")  # type: ignore[arg-type]


def test_single_point_and_rescaling() -> None:
    model = _tiny()
    _set_known(model)
    (m,) = sampling_locations(model, torch.randn(3, HEIGHT, WIDTH), (10.0, 20.0), stages=[1])
    assert m.queries.shape == (1, 2)
    with pytest.raises(ValueError):
        m.locations[0, 0, 0, 0] = 1.0  # read-only
    big = m.rescaled((2 * HEIGHT, 3 * WIDTH))
    assert big.image_size == (80, 216) and big.stride == m.stride
    np.testing.assert_allclose(big.queries, [[(10.5 * 3) - 0.5, (20.5 * 2) - 0.5]])
    np.testing.assert_allclose(big.locations[..., 0], (m.locations[..., 0] + 0.5) * 3 - 0.5)
    back = big.rescaled((HEIGHT, WIDTH))
    np.testing.assert_allclose(back.locations, m.locations, atol=1e-12)


# --- drawing ----------------------------------------------------------------------------------


def _photo() -> np.ndarray:
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    return np.stack([xx * 3, yy * 6, 255 - xx * 3], axis=-1).clip(0, 255).astype(np.uint8)


def _maps() -> list[SamplingMap]:
    model = _tiny()
    for module in model.modules():
        if isinstance(module, DCNv3):
            torch.nn.init.normal_(module.offset.weight, std=0.5)
    return sampling_locations(model, torch.randn(3, HEIGHT, WIDTH), QUERIES[2:])


def test_save_sampling_maps_writes_a_png(tmp_path) -> None:
    target = tmp_path / "maps.png"
    maps = _maps()
    save_sampling_maps(target, _photo(), maps, title="tiny", dpi=60)
    with Image.open(target) as picture:
        assert picture.format == "PNG" and picture.mode == "RGBA"
        # One row of four 3.6-inch panels.
        assert picture.width == round(4 * 3.6 * 60) and picture.height > 100
        pixels = np.asarray(picture.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # image, markers, colour bars
    assert [p.name for p in tmp_path.iterdir()] == ["maps.png"]  # no temporary left
    # All blocks: a row per stage, so a taller picture.
    model = _tiny()
    all_blocks = sampling_locations(model, torch.randn(3, HEIGHT, WIDTH), QUERIES[:1],
                                    blocks="all")
    with Image.open(io.BytesIO(render_sampling_maps(_photo(), all_blocks, dpi=60))) as tall:
        assert tall.width == round(2 * 3.6 * 60) and tall.height > 3 * picture.height


def test_many_groups_render_with_a_colour_scale() -> None:
    rng = np.random.default_rng(0)
    weights = rng.dirichlet(np.ones(9), size=(2, 24))
    many = SamplingMap(
        stage=3, block=0, stride=32, image_size=(HEIGHT, WIDTH), feature_size=(2, 3),
        queries=np.array([[10.0, 10.0], [60.0, 30.0]]), feature_pixels=np.array([[0, 0], [1, 1]]),
        locations=rng.uniform(-20, 90, size=(2, 24, 9, 2)), weights=weights,
        geometry=DCNv3Geometry(3, group=24),
    )
    png = render_sampling_maps(_photo(), [many], dpi=50)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(png)) as picture:
        assert picture.width == round(3.6 * 50)


def test_drawing_refuses_bad_inputs_and_keeps_the_old_file(tmp_path) -> None:
    maps = _maps()
    target = tmp_path / "maps.png"
    target.write_bytes(b"old")
    with pytest.raises(ValueError, match="rescale"):
        save_sampling_maps(target, _photo()[:20], maps)
    assert target.read_bytes() == b"old"
    with pytest.raises(ValueError, match=".png"):
        save_sampling_maps(tmp_path / "maps.jpg", _photo(), maps)
    assert not (tmp_path / "maps.jpg").exists()
    with pytest.raises(ValueError, match="no sampling maps"):
        render_sampling_maps(_photo(), [])


def test_missing_matplotlib_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    maps = _maps()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match="matplotlib"):
        render_sampling_maps(_photo(), maps)


def test_importing_the_analysis_does_not_import_matplotlib() -> None:
    program = ("import sys, internimage, internimage.analysis\n"
               "print('matplotlib' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr


# --- FlashInternImage: DCNv4 blocks (packed offsets, point weights as given) -----------------


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
