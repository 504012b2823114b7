"""Where DCNv3 looks: sampling locations and mask weights for query pixels (the paper's Fig. 5).

For a query pixel of the input image, every DCNv3 block computes, at the feature pixel that holds
the query, ``G`` groups of ``P`` sampling points (``P = k*k``, one fewer with ``remove_center``)
and a weight per point. :func:`sampling_locations` records them for one block per stage (by
default the last) with forward hooks on the block's ``offset`` and ``mask`` projections, runs the
operator's own coordinate formula (:func:`internimage.ops.reference.sampling_coordinates`) and
normalisation (:func:`internimage.layers.dcnv3.normalize_point_weights`) on what it recorded, and
maps the coordinates from feature pixels back to input pixels. :func:`render_sampling_maps` and
:func:`save_sampling_maps` draw them, one panel per stage, over the image.

Pixel coordinates follow the operator: an integer coordinate is a pixel centre, ``x`` to the
right and ``y`` down; the input image's pixel ``(x, y)`` covers ``[x - 0.5, x + 0.5)`` along each
axis. A stage ``s`` has stride ``4 * 2**s`` relative to the input (the stem halves the size twice,
each stage after the first starts with a stride-2 downsampling). Where a feature pixel sits on
the input follows from those convolutions (3 x 3, stride 2, padding 1): output pixel ``i`` of
each is centred on its input pixel ``2 i``, so with the default ``"conv"`` alignment

* a feature coordinate ``x_f`` (fractional for sampling points) of a stage with stride ``S`` is
  the input coordinate ``x_f * S``, and
* a query input pixel ``x`` belongs to the nearest feature pixel, ``floor(x / S + 0.5)``.

The ``"cell"`` alignment instead treats feature pixel ``x_f`` as covering the input cell
``[x_f * S - 0.5, (x_f + 1) * S - 0.5)`` (as if the network pooled ``S x S`` blocks): ``x_f``
maps to ``(x_f + 0.5) * S - 0.5`` and a query to ``floor((x + 0.5) / S)``. The two differ by
``(S - 1) / 2`` input pixels (1.5 at stage 0, 15.5 at stage 3).

matplotlib is imported only by the drawing functions, so importing this module needs none of
the optional extras.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from internimage.draw import figure_png
from internimage.errors import MissingDependencyError
from internimage.files import atomic_write_bytes
from internimage.layers.dcnv3 import DCNv3, normalize_point_weights
from internimage.layers.dcnv4 import DCNv4
from internimage.ops.geometry import DCNv3Geometry
from internimage.ops.packing import unpack_offset_mask
from internimage.ops.reference import sampling_coordinates

__all__ = [
    "ALIGNMENTS",
    "Alignment",
    "SamplingMap",
    "feature_to_input",
    "input_to_feature",
    "render_sampling_maps",
    "sampling_locations",
    "save_sampling_maps",
    "stage_stride",
]

#: How feature pixels sit on input pixels; see the module docstring.
Alignment = Literal["cell", "conv"]
ALIGNMENTS: tuple[str, ...] = ("cell", "conv")


def stage_stride(stage: int) -> int:
    """Stride of stage ``stage`` (0-3) relative to the input image: ``4 * 2**stage``.

    The stem (two stride-2 convolutions) gives stride 4 and every later stage starts with a
    stride-2 :class:`~internimage.models.internimage.Downsample`.
    """
    if stage < 0:
        raise ValueError(f"stage must be >= 0, got {stage}")
    return 4 * 2**stage


def _check_alignment(alignment: str) -> None:
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")


def feature_to_input(
    coords: np.ndarray | float, stride: int, alignment: Alignment = "conv"
) -> np.ndarray:
    """Input-pixel coordinates of feature-pixel coordinates (same along x and y).

    Args:
        coords: Feature coordinates of any shape (integer = feature pixel centre).
        stride: Stride of the feature map relative to the input.
        alignment: ``"cell"``: ``(x_f + 0.5) * stride - 0.5``; ``"conv"``: ``x_f * stride``.

    Returns:
        float64 array of the shape of ``coords``.
    """
    _check_alignment(alignment)
    values = np.asarray(coords, dtype=np.float64)
    if alignment == "cell":
        return (values + 0.5) * stride - 0.5
    return values * stride


def input_to_feature(
    coords: np.ndarray | float, stride: int, size: int, alignment: Alignment = "conv"
) -> np.ndarray:
    """Index of the feature pixel that an input coordinate belongs to (same along x and y).

    Args:
        coords: Input-pixel coordinates of any shape.
        stride: Stride of the feature map relative to the input.
        size: Number of feature pixels along the axis; indices are clipped to ``0..size-1``
            (the feature map can be one pixel short of covering a border of the input).
        alignment: ``"cell"``: the feature pixel whose cell contains the input pixel,
            ``floor((x + 0.5) / stride)``; ``"conv"``: the nearest receptive-field centre,
            ``floor(x / stride + 0.5)``.

    Returns:
        int64 array of the shape of ``coords``.
    """
    _check_alignment(alignment)
    values = np.asarray(coords, dtype=np.float64)
    if alignment == "cell":
        index = np.floor((values + 0.5) / stride)
    else:
        index = np.floor(values / stride + 0.5)
    return np.clip(index, 0, size - 1).astype(np.int64)


def _read_only(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class SamplingMap:
    """Sampling points of one DCNv3 block for a set of query pixels, in input-image pixels.

    The arrays are read-only numpy arrays. Coordinates are ``(x, y)`` with integer values at
    pixel centres of the image that :attr:`image_size` describes (the network input, or another
    size after :meth:`rescaled`).

    Attributes:
        stage: Stage index, 0-3.
        block: Block index inside the stage (0-based).
        stride: Stride of the stage relative to the network input.
        image_size: ``(height, width)`` of the image the coordinates refer to.
        feature_size: ``(height, width)`` of the stage's feature map.
        queries: float64 ``[Q, 2]`` query pixels ``(x, y)``.
        feature_pixels: int64 ``[Q, 2]`` the feature pixel ``(column, row)`` of each query,
            whose offsets and mask the map shows.
        locations: float64 ``[Q, G, P, 2]`` sampling location ``(x, y)`` of every group ``g``
            and kernel point ``p`` (in the order of ``geometry.kernel_grid()``). A point whose
            offset is not finite is reported where the operator puts it, at feature coordinate
            -2 (outside the image); finite feature coordinates are clamped to
            ``[-2, size + 1]`` as the operator does, which moves only points that read zero.
        weights: float64 ``[Q, G, P]`` mask weight of every point, as the operator uses it
            (softmax over the ``P`` points of a group: each group sums to 1; or a sigmoid per
            point where the module says ``mask_normalization = "sigmoid"``; DCNv4's weights as
            its projection gives them, ``"none"``).
        geometry: The block's :class:`~internimage.ops.geometry.DCNv3Geometry`.
        mask_normalization: ``"softmax"``, ``"sigmoid"`` or ``"none"`` (DCNv4).
        alignment: How feature pixels were mapped to input pixels (``"cell"`` or ``"conv"``).
    """

    stage: int
    block: int
    stride: int
    image_size: tuple[int, int]
    feature_size: tuple[int, int]
    queries: np.ndarray
    feature_pixels: np.ndarray
    locations: np.ndarray
    weights: np.ndarray
    geometry: DCNv3Geometry
    mask_normalization: str = "softmax"
    alignment: str = "conv"

    @property
    def groups(self) -> int:
        """Number of DCNv3 groups G."""
        return int(self.locations.shape[1])

    @property
    def points(self) -> int:
        """Sampling points per group P."""
        return int(self.locations.shape[2])

    def rescaled(self, image_size: tuple[int, int]) -> SamplingMap:
        """The same map in the pixels of a resized copy of the image (e.g. the original photo
        when the network saw a smaller version).

        Pixel edges map to pixel edges: ``x' = (x + 0.5) * W' / W - 0.5``, likewise for ``y``.

        Args:
            image_size: ``(height, width)`` of the other image.

        Returns:
            A new map; :attr:`stride` and :attr:`feature_pixels` stay those of the network.
        """
        height, width = (int(v) for v in image_size)
        if height <= 0 or width <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        scale = np.array(
            [width / self.image_size[1], height / self.image_size[0]], dtype=np.float64
        )
        return replace(
            self,
            image_size=(height, width),
            queries=_read_only((self.queries + 0.5) * scale - 0.5),
            locations=_read_only((self.locations + 0.5) * scale - 0.5),
        )


# --- recording --------------------------------------------------------------------------------


def _stage_modules(model: nn.Module) -> Sequence[nn.Module]:
    """The stages (``levels``) of an InternImage classifier or features-only backbone."""
    levels = getattr(model, "levels", None)
    if not isinstance(levels, nn.ModuleList) or not all(
        isinstance(getattr(level, "blocks", None), nn.ModuleList)
        and all(isinstance(getattr(block, "dcn", None), DCNv3 | DCNv4) for block in level.blocks)
        for level in levels
    ):
        raise TypeError(
            f"expected an InternImage classifier or features-only backbone (internimage."
            f"create_model), got {type(model).__name__}"
        )
    return levels


def _image_batch(image: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
    """``[3, H, W]`` or ``[1, 3, H, W]`` -> ``[1, 3, H, W]`` on the model's device and dtype."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise ValueError(
            f"image must be one normalised RGB image [3, H, W] or [1, 3, H, W], got shape "
            f"{tuple(image.shape)}"
        )
    if not image.is_floating_point():
        raise TypeError(
            f"image must be a normalised float tensor (e.g. internimage.data.normalize of "
            f"pixels / 255), got dtype {image.dtype}"
        )
    if reference is not None:
        image = image.to(device=reference.device, dtype=reference.dtype)
    return image


def _query_points(
    points: Sequence[Sequence[float]] | np.ndarray, height: int, width: int
) -> np.ndarray:
    """float64 ``[Q, 2]`` query pixels, checked to lie on the image."""
    array = np.asarray(points, dtype=np.float64)
    if array.shape == (2,):
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] == 0:
        raise ValueError(
            f"points must be (x, y) pairs, shape [Q, 2] with Q >= 1, got shape {array.shape}"
        )
    # The image spans [-0.5, size - 0.5] in pixel coordinates (integers are pixel centres).
    inside = (
        np.isfinite(array).all(axis=1)
        & (array[:, 0] >= -0.5) & (array[:, 0] <= width - 0.5)
        & (array[:, 1] >= -0.5) & (array[:, 1] <= height - 0.5)
    )
    if not inside.all():
        bad = array[~inside][0]
        raise ValueError(
            f"query point ({bad[0]:g}, {bad[1]:g}) is outside the {width}x{height} image "
            f"(x in 0..{width - 1}, y in 0..{height - 1})"
        )
    return array


def _targets(
    levels: Sequence[nn.Module],
    stages: Sequence[int] | None,
    blocks: Literal["last", "all"] | Sequence[int],
    last_run: int | None,
) -> list[tuple[int, int]]:
    """``(stage, block)`` pairs to record, stage by stage, blocks in order; ``stages=None`` means
    every stage up to ``last_run`` (the last stage the model computes; None: all)."""
    if stages is None:
        chosen = list(range(len(levels) if last_run is None else last_run + 1))
    else:
        chosen = [int(s) for s in stages]
    if not chosen or any(not 0 <= s < len(levels) for s in chosen) or len(set(chosen)) < len(
        chosen
    ):
        raise ValueError(
            f"stages must be distinct indices in 0..{len(levels) - 1}, got {stages}"
        )
    pairs = []
    for stage in sorted(chosen):
        depth = len(levels[stage].blocks)
        if blocks == "last":
            indices = [depth - 1]
        elif blocks == "all":
            indices = list(range(depth))
        elif isinstance(blocks, str):
            raise ValueError(f"blocks must be 'last', 'all' or block indices, got {blocks!r}")
        else:
            indices = []
            for b in blocks:
                if not -depth <= int(b) < depth:
                    raise ValueError(f"stage {stage} has {depth} blocks; block {b} does not exist")
                indices.append(int(b) % depth)
            indices = sorted(set(indices))
            if not indices:
                raise ValueError("blocks is empty; give 'last', 'all' or block indices")
        pairs += [(stage, b) for b in indices]
    return pairs


def _run_stages(model: nn.Module, x: torch.Tensor, last_stage: int) -> None:
    """Run the model far enough for stages ``0..last_stage`` to compute their blocks."""
    from internimage.models.internimage import InternImage

    if isinstance(model, InternImage):
        # forward_intermediates stops after the last stage asked for: no head, no later stages.
        model.forward_intermediates(x, indices=[last_stage])
    else:
        # A features-only backbone runs up to its last out_index; a later stage never runs,
        # which the caller reports.
        model(x)


def _normalise_mask(module: nn.Module, logits: torch.Tensor) -> tuple[torch.Tensor, str]:
    """The operator's point weights from the mask projection's logits ``[..., G, P]``."""
    kind = getattr(module, "mask_normalization", "softmax")
    if kind == "none":  # DCNv4: the projection's values are the weights
        return logits, kind
    try:
        return normalize_point_weights(logits, kind), kind
    except ValueError as error:
        raise ValueError(f"{type(module).__name__}: {error}") from None


@torch.no_grad()
def sampling_locations(
    model: nn.Module,
    image: torch.Tensor,
    points: Sequence[Sequence[float]] | np.ndarray,
    *,
    stages: Sequence[int] | None = None,
    blocks: Literal["last", "all"] | Sequence[int] = "last",
    alignment: Alignment = "conv",
) -> list[SamplingMap]:
    """Sampling locations and mask weights of DCNv3 blocks for query pixels of one image.

    The model runs once on ``image`` in eval mode (no dropout or drop path; the modes of its
    modules are restored afterwards) with forward hooks on the ``offset`` and ``mask``
    projections of the chosen blocks. Their outputs at each query's feature pixel give the
    sampling coordinates (through the operator's formula, ``sampling_coordinates``, with the
    block's ``geometry``) and the point weights (through the module's own normalisation).

    Args:
        model: An :class:`~internimage.models.internimage.InternImage` classifier or a
            features-only backbone (``internimage.create_model(..., features_only=True)``).
            A features-only backbone runs only up to its last ``out_indices`` stage, so later
            stages cannot be asked for.
        image: One normalised image, float ``[3, H, W]`` or ``[1, 3, H, W]`` (as the model
            expects it: resized and normalised with its mean and std). It is moved to the
            model's device and dtype.
        points: Query pixels ``(x, y)`` in input-image pixels, shape ``[Q, 2]`` (or one pair);
            on the image, ``-0.5 <= x <= W - 0.5`` and ``-0.5 <= y <= H - 0.5`` (pixel
            ``(0, 0)`` is the top-left one; fractions allowed).
        stages: Stage indices to record (default: every stage the model computes: all four
            for a classifier, up to the last ``out_indices`` entry for a features-only one).
        blocks: Which blocks of each stage: ``"last"`` (the default: the last block of each
            stage, whose sampling feeds the stage output), ``"all"``, or block indices
            (negative ones count from the end) applied to every chosen stage.
        alignment: How feature pixels sit on input pixels, ``"conv"`` (default) or ``"cell"``
            (see the module docstring).

    Returns:
        One :class:`SamplingMap` per recorded block, by stage and then block.

    Raises:
        TypeError: ``model`` is not an InternImage model, or ``image`` is not a float tensor.
        ValueError: Bad shapes, a point outside the image, unknown stages or blocks, or a stage
            that the model does not compute.
    """
    _check_alignment(alignment)
    levels = _stage_modules(model)
    reference = next(iter(model.parameters()), None)
    x = _image_batch(image, reference)
    height, width = int(x.shape[-2]), int(x.shape[-1])
    queries = _query_points(points, height, width)
    # A features-only backbone computes stages up to its last out_index and no further.
    out_indices = getattr(model, "out_indices", None)
    last_run = max(out_indices) if out_indices else None
    targets = _targets(levels, stages, blocks, last_run)

    captured: dict[tuple[int, int, str], torch.Tensor] = {}
    handles = []

    def recorder(key: tuple[int, int, str]) -> Any:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            captured[key] = output[0].detach()  # [H, W, channels] of the single image

        return hook

    for stage, block in targets:
        dcn = levels[stage].blocks[block].dcn
        # DCNv3 projects offsets and mask logits apart; DCNv4 packs both into offset_mask.
        names = ("offset_mask",) if isinstance(dcn, DCNv4) else ("offset", "mask")
        for name in names:
            handles.append(getattr(dcn, name).register_forward_hook(recorder((stage, block, name))))
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        _run_stages(model, x, max(stage for stage, _ in targets))
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes:  # exactly as before, frozen stages included
            module.training = mode

    maps = []
    for stage, block in targets:
        dcn = levels[stage].blocks[block].dcn
        if isinstance(dcn, DCNv4) and (stage, block, "offset_mask") in captured:
            offset, mask = unpack_offset_mask(captured.pop((stage, block, "offset_mask"))[None],
                                              dcn.group, dcn.points)
            captured[(stage, block, "offset")], captured[(stage, block, "mask")] = (
                offset[0], mask[0])
        if (stage, block, "offset") not in captured or (stage, block, "mask") not in captured:
            raise ValueError(
                f"stage {stage} did not run: this model stops earlier (a features-only backbone "
                f"computes stages up to its last out_indices entry); ask for earlier stages or "
                f"build it with out_indices including {stage}"
            )
        maps.append(
            _block_map(dcn, stage, block, captured[(stage, block, "offset")],
                       captured[(stage, block, "mask")], queries, (height, width), alignment)
        )
    return maps


def _block_map(
    dcn: DCNv3 | DCNv4,
    stage: int,
    block: int,
    offset: torch.Tensor,
    mask_logits: torch.Tensor,
    queries: np.ndarray,
    image_size: tuple[int, int],
    alignment: Alignment,
) -> SamplingMap:
    """One block's :class:`SamplingMap` from its recorded ``offset`` ``[Hs, Ws, G*P*2]`` and
    ``mask`` logits ``[Hs, Ws, G*P]``."""
    geometry: DCNv3Geometry = dcn.geometry
    fh, fw = int(offset.shape[0]), int(offset.shape[1])
    g, p = geometry.group, geometry.points
    stride = stage_stride(stage)
    cols = input_to_feature(queries[:, 0], stride, fw, alignment)
    rows = input_to_feature(queries[:, 1], stride, fh, alignment)
    # The block's sampling keeps the feature size (stride 1, "same" padding), so the operator's
    # input size is the feature size. float64 keeps the coordinates exact for any map size.
    fx, fy = sampling_coordinates(offset[None].to(torch.float64), geometry, fh, fw)
    index_r = torch.as_tensor(rows, device=offset.device)
    index_c = torch.as_tensor(cols, device=offset.device)
    fx = fx[0, index_r, index_c].cpu().numpy()  # [Q, G, P] feature pixels
    fy = fy[0, index_r, index_c].cpu().numpy()
    locations = np.stack(
        (feature_to_input(fx, stride, alignment), feature_to_input(fy, stride, alignment)),
        axis=-1,
    )  # [Q, G, P, 2]
    logits = mask_logits[index_r, index_c].reshape(len(queries), g, p)
    weights, kind = _normalise_mask(dcn, logits)
    return SamplingMap(
        stage=stage,
        block=block,
        stride=stride,
        image_size=image_size,
        feature_size=(fh, fw),
        queries=_read_only(queries.copy()),
        feature_pixels=_read_only(np.stack((cols, rows), axis=1)),
        locations=_read_only(locations),
        weights=_read_only(weights.to(torch.float64).cpu().numpy()),
        geometry=geometry,
        mask_normalization=kind,
        alignment=alignment,
    )


# --- drawing ----------------------------------------------------------------------------------

# Panel width in inches; the height follows the image's aspect ratio.
_PANEL_INCHES = 3.6
# Marker areas (points^2) of the lightest and of the heaviest sampling point of a panel.
_MIN_AREA, _MAX_AREA = 6.0, 170.0


def _require_matplotlib() -> tuple[Any, Any, Any]:
    """matplotlib's package, ``Figure`` and the Agg canvas, or a one-line error."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise MissingDependencyError(
            "drawing sampling maps needs matplotlib; install it with `pip install "
            "internimage[train]` (or `pip install matplotlib`)"
        ) from error
    return matplotlib, Figure, FigureCanvasAgg


def _display_image(image: np.ndarray) -> np.ndarray:
    """uint8 or [0, 1] float ``[H, W, 3]`` / ``[H, W]`` pixels as ``[H, W, 3]`` for imshow."""
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"image must be [H, W, 3] or [H, W] pixels, got shape {pixels.shape}")
    if pixels.dtype == np.uint8:
        return pixels
    if not np.issubdtype(pixels.dtype, np.floating):
        raise ValueError(f"image must be uint8 or float in [0, 1], got dtype {pixels.dtype}")
    return np.clip(pixels, 0.0, 1.0)


def _group_colors(matplotlib: Any, groups: int) -> np.ndarray:
    """``[G, 4]`` RGBA: qualitative colours up to 20 groups, evenly spaced 'turbo' beyond."""
    to_rgba = matplotlib.colors.to_rgba_array
    if groups <= 10:
        return to_rgba(matplotlib.colormaps["tab10"].colors[:groups])
    if groups <= 20:
        # tab20 pairs a dark and a light shade of each hue; dark ones first keeps neighbours apart.
        colors = matplotlib.colormaps["tab20"].colors
        order = list(range(0, 20, 2)) + list(range(1, 20, 2))
        return to_rgba([colors[i] for i in order[:groups]])
    return to_rgba(matplotlib.colormaps["turbo"](np.linspace(0.05, 0.95, groups)))


def _layout(maps: Sequence[SamplingMap]) -> list[list[SamplingMap]]:
    """One row when every stage has one map; else a row per stage, its blocks across."""
    by_stage: dict[int, list[SamplingMap]] = {}
    for m in maps:
        by_stage.setdefault(m.stage, []).append(m)
    if all(len(row) == 1 for row in by_stage.values()):
        return [list(maps)]
    return list(by_stage.values())


def render_sampling_maps(
    image: np.ndarray,
    maps: Sequence[SamplingMap],
    *,
    title: str | None = None,
    dpi: int = 100,
) -> bytes:
    """Draw sampling maps over the image, one panel per map, and return the PNG bytes.

    Each panel shows the image with every query pixel as a white star; the sampling points of
    each group are drawn in that group's colour (a discrete colour bar labelled "group" below
    the panel), with marker area and opacity growing with the mask weight (the heaviest point of
    the panel is the largest); the title gives stage, block, stride and groups. Points outside
    the image are counted under the panel. With one map per stage (the default of
    :func:`sampling_locations`) the panels form one row, as in the paper's Fig. 5; with several
    blocks per stage, a row per stage.

    Args:
        image: uint8 (or float in [0, 1]) ``[H, W, 3]`` or ``[H, W]`` pixels of the image the
            maps' coordinates refer to (``map.image_size``; see :meth:`SamplingMap.rescaled`).
        maps: From :func:`sampling_locations`.
        title: First line of the figure's title (e.g. the model and image names).
        dpi: Resolution; a panel is 3.6 inches wide.

    Returns:
        The PNG file's bytes.

    Raises:
        ValueError: No maps, or an image whose size is not the maps' ``image_size``.
        MissingDependencyError: matplotlib is not installed.
    """
    matplotlib, figure_class, canvas_class = _require_matplotlib()
    pixels = _display_image(image)
    maps = list(maps)
    if not maps:
        raise ValueError("no sampling maps to draw")
    height, width = pixels.shape[:2]
    for m in maps:
        if tuple(m.image_size) != (height, width):
            raise ValueError(
                f"the maps are in the pixels of a {m.image_size[1]}x{m.image_size[0]} image but "
                f"the image is {width}x{height}; rescale them with SamplingMap.rescaled"
            )
    rows = _layout(maps)
    columns = max(len(row) for row in rows)
    panel_h = _PANEL_INCHES * height / width
    figure = figure_class(
        figsize=(columns * _PANEL_INCHES, len(rows) * (panel_h + 1.0) + 0.6), dpi=dpi,
        layout="constrained",
    )
    canvas_class(figure)  # the Agg canvas: files only, and no global pyplot state
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            if c >= len(row):
                ax.set_axis_off()
                continue
            _draw_panel(matplotlib, figure, ax, pixels, row[c])
    normalization = maps[0].mask_normalization
    note = (
        f"{'DCNv4' if normalization == 'none' else 'DCNv3'} sampling locations (star: query "
        f"pixel; marker area and opacity: "
        f"{'|point weight|' if normalization == 'none' else f'{normalization} mask weight'})"
    )
    figure.suptitle(note if title is None else f"{title}\n{note}", fontsize=10)
    return figure_png(figure, dpi=dpi)


def _draw_panel(
    matplotlib: Any, figure: Any, ax: Any, pixels: np.ndarray, m: SamplingMap
) -> None:
    """One stage's panel: image, sampling points by group and weight, query stars, colour bar."""
    height, width = pixels.shape[:2]
    ax.imshow(pixels, interpolation="antialiased")  # pixel centres at integer coordinates
    g, p = m.groups, m.points
    colors = _group_colors(matplotlib, g)
    xs = m.locations[..., 0].reshape(-1)
    ys = m.locations[..., 1].reshape(-1)
    groups = np.broadcast_to(np.arange(g)[None, :, None], m.weights.shape).reshape(-1)
    weights = m.weights.reshape(-1)
    if m.mask_normalization == "none":
        # DCNv4's weights have either sign: the marker shows the magnitude.
        weights = np.abs(weights)
    heaviest = float(weights.max()) if weights.size and weights.max() > 0 else 1.0
    share = np.clip(weights / heaviest, 0.0, 1.0)
    # Heaviest first, so that light points are drawn on top and stay visible.
    order = np.argsort(-share, kind="stable")
    rgba = colors[groups[order]].copy()
    rgba[:, 3] = 0.45 + 0.55 * share[order]
    ax.scatter(
        xs[order], ys[order], s=_MIN_AREA + (_MAX_AREA - _MIN_AREA) * share[order], c=rgba,
        edgecolors=(0.0, 0.0, 0.0, 0.6), linewidths=0.4, zorder=3,
    )
    ax.scatter(
        m.queries[:, 0], m.queries[:, 1], marker="*", s=320, c="white", edgecolors="black",
        linewidths=1.2, zorder=4,
    )
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(
        f"stage {m.stage} · block {m.block} · stride {m.stride}\n"
        f"{g} group{'s' if g != 1 else ''} × {p} points",
        fontsize=9,
    )
    outside = int(
        np.count_nonzero((xs < -0.5) | (xs > width - 0.5) | (ys < -0.5) | (ys > height - 0.5))
    )
    if outside:
        ax.set_xlabel(f"{outside} of {xs.size} points outside the image", fontsize=8)
    cmap = matplotlib.colors.ListedColormap(colors)
    norm = matplotlib.colors.BoundaryNorm(np.arange(g + 1) - 0.5, g)
    bar = figure.colorbar(
        matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, orientation="horizontal",
        fraction=0.06, pad=0.03, aspect=30,
    )
    ticks = np.arange(g) if g <= 12 else np.unique(np.linspace(0, g - 1, 6).round().astype(int))
    bar.set_ticks(ticks)
    bar.set_label("group", fontsize=8)
    bar.ax.tick_params(labelsize=7)


def save_sampling_maps(
    path: str | Path,
    image: np.ndarray,
    maps: Sequence[SamplingMap],
    *,
    title: str | None = None,
    dpi: int = 100,
) -> None:
    """Draw with :func:`render_sampling_maps` (same arguments after ``path``) and write the PNG
    to ``path`` atomically: readers see the old file or the complete new one, and nothing is
    written when drawing fails.

    Raises:
        ValueError: ``path`` does not end in ``.png``, or the inputs do not fit.
        MissingDependencyError: matplotlib is not installed.
    """
    path = Path(path)
    # PNG bytes under another extension would mislead whoever opens the file.
    if path.suffix.lower() != ".png":
        raise ValueError(f"sampling maps are saved as PNG; {path} should end in .png")
    atomic_write_bytes(path, render_sampling_maps(image, maps, title=title, dpi=dpi))

