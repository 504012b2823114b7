"""Fashion-MNIST scenes: a deterministic synthetic dataset with real pixels for dense tasks.

Each scene is a square RGB canvas (128 px by default) with a tinted, noisy background and 2 to 5
Fashion-MNIST items pasted at random positions and scales (28 px -> 20..64 px). Later items
occlude earlier ones. An item's mask is where its rescaled intensity exceeds
:data:`ITEM_THRESHOLD`, minus what later items cover; an item with fewer than
:data:`MIN_VISIBLE_PIXELS` visible pixels is dropped altogether (not painted, not labelled), so
every kept instance has a meaningful box.

Sources: training scenes draw only from the bundled subset's *train* images and validation scenes
only from its *test* images, so no validation item is ever seen in training. Every scene records
the subset indices it used (:attr:`SceneInstance.source_index`).

Determinism: scene ``i`` of a split depends only on ``(seed, split, i, size)`` (its own numpy
Generator), so the same arguments give byte-identical files, and a larger set begins with the
scenes of a smaller one.

Label convention of the written annotations (:func:`write_scenes_ade`): single-channel ``"L"``
PNGs with 0 = background and ``k + 1`` = Fashion-MNIST class ``k`` (1..10). Read them with
``reduce_zero_label=False`` to get 11 classes with the background as class 0 (the intended use:
:data:`SCENE_CLASSES`, also written to ``classes.txt``). ``reduce_zero_label=True`` instead gives
the 10 item classes 0..9 with the background ignored (255), as for real ADE20K.

Detection: :class:`Scene` keeps one :class:`SceneInstance` per visible item with its class, its
visible (after occlusion) mask and its box, so a COCO-style JSON writer needs nothing but
``scene.instances`` (box ``(x0, y0, x1, y1)`` -> COCO ``[x0, y0, x1 - x0, y1 - y0]``, the mask ->
RLE or polygons, ``category + 1`` -> category id, matching the semantic labels).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from internimage.data.fashion_mnist import FASHION_MNIST_CLASSES, load_bundled_subset
from internimage.errors import ConfigError, DataError, MissingDependencyError
from internimage.files import atomic_write_bytes, atomic_write_text

__all__ = [
    "ADE_FOLDER",
    "COCO_FOLDER",
    "ITEM_THRESHOLD",
    "MIN_VISIBLE_PIXELS",
    "SCENE_CLASSES",
    "SCENE_SPLITS",
    "Scene",
    "SceneInstance",
    "generate_scene",
    "generate_scenes",
    "iter_scenes",
    "default_scenes_root",
    "render_item_alpha",
    "scene_name",
    "write_scenes_ade",
    "write_scenes_coco",
]

#: Names of the annotation values: 0 background, then the ten Fashion-MNIST classes (1..10).
SCENE_CLASSES: tuple[str, ...] = ("background", *FASHION_MNIST_CLASSES)
#: Scene split (ADE20K naming) -> the bundled Fashion-MNIST split its items come from.
SCENE_SPLITS: dict[str, str] = {"training": "train", "validation": "test"}
#: Folder name of the ADE20K layout under the writer's root.
ADE_FOLDER = "ADEChallengeData2016"
#: Folder name of the COCO layout under the writer's root.
COCO_FOLDER = "coco"

#: A rescaled item pixel belongs to the item where its intensity (0..255) is above this.
ITEM_THRESHOLD = 24
#: Instances with fewer visible pixels than this after occlusion are dropped.
MIN_VISIBLE_PIXELS = 20
#: Objects per scene, inclusive.
MIN_OBJECTS, MAX_OBJECTS = 2, 5
#: Item side after rescaling (from 28 px), inclusive; capped at the canvas size.
MIN_ITEM_SIDE, MAX_ITEM_SIDE = 20, 64
#: Background tints are drawn per channel in [0, 80) and item colours in [144, 256), so every
#: item pixel differs from the background by at least 0.4 * 64 levels per channel, well above
#: the noise.
_TINT_HIGH, _COLOR_LOW = 80, 144
#: Inside its mask an item pixel is ``tint + (colour - tint) * (_FLOOR + (1 - _FLOOR) * a)`` with
#: ``a`` the rescaled intensity in [0, 1]: the floor keeps faint parts of an item distinct from
#: the background while the intensity keeps the item's texture.
_FLOOR = 0.4
#: Uniform integer noise in [-_NOISE, _NOISE] added to every pixel of the canvas.
_NOISE = 8

_MANIFEST = "scenes.json"
_GENERATOR_ID = "internimage.fashion-mnist-scenes"
_FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class SceneInstance:
    """One visible item of a scene.

    Attributes:
        category: Fashion-MNIST class index 0..9 (the semantic label is ``category + 1``).
        mask: bool ``[H, W]``, the pixels where this item is visible (after occlusion).
        box: ``(x0, y0, x1, y1)`` of the visible mask in pixels, ends exclusive (so the box is
            ``x1 - x0`` wide).
        source_index: Index of the item in the bundled subset's :attr:`Scene.source_split`.
        placement: ``(y, x, side)``: top-left corner and side of the rescaled (square) item;
            its full, unoccluded extent is ``[y, y + side) x [x, x + side)``.
        color: RGB colour the item is painted with.
    """

    category: int
    mask: np.ndarray
    box: tuple[int, int, int, int]
    source_index: int
    placement: tuple[int, int, int]
    color: tuple[int, int, int]

    @property
    def area(self) -> int:
        """Visible pixels."""
        return int(self.mask.sum())


@dataclass(frozen=True, eq=False)
class Scene:
    """A generated scene: pixels plus the instances that explain them.

    Attributes:
        image: uint8 ``[H, W, 3]``.
        instances: Visible items in paint order (back to front); their masks are disjoint.
        split: ``"training"`` or ``"validation"``.
        source_split: Fashion-MNIST split the items come from (``"train"`` or ``"test"``).
        background: RGB tint of the background (before noise).
    """

    image: np.ndarray
    instances: tuple[SceneInstance, ...]
    split: str
    source_split: str
    background: tuple[int, int, int]

    @property
    def source_indices(self) -> tuple[int, ...]:
        """Subset indices of the items used, in paint order."""
        return tuple(inst.source_index for inst in self.instances)

    def semantic_mask(self) -> np.ndarray:
        """uint8 ``[H, W]``: 0 background, ``category + 1`` where an instance is visible."""
        labels = np.zeros(self.image.shape[:2], np.uint8)
        for inst in self.instances:
            labels[inst.mask] = inst.category + 1
        return labels


@lru_cache(maxsize=2)
def _source(split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_bundled_subset(split)
    # Cached and shared by every scene: make accidental in-place edits fail loudly.
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _check_split(split: str) -> str:
    if split not in SCENE_SPLITS:
        raise ConfigError(
            f"unknown scene split {split!r}; choose one of {sorted(SCENE_SPLITS)}"
        )
    return split


def _check_size(size: int) -> int:
    if not isinstance(size, int) or size < MIN_ITEM_SIDE:
        raise ConfigError(f"scene size must be an integer >= {MIN_ITEM_SIDE}, got {size!r}")
    return size


def _check_seed(seed: int) -> int:
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"scene seed must be a non-negative integer, got {seed!r}")
    return seed


def render_item_alpha(item: np.ndarray, side: int) -> np.ndarray:
    """Rescale one uint8 ``[28, 28]`` item to ``[side, side]`` (Pillow bilinear), as scenes do."""
    from PIL import Image

    return np.asarray(Image.fromarray(item).resize((side, side), Image.Resampling.BILINEAR))


def scene_name(split: str, index: int) -> str:
    """File stem of scene ``index`` of ``split`` (e.g. ``scene_training_000012``)."""
    return f"scene_{_check_split(split)}_{index:06d}"


def generate_scene(split: str, index: int, *, seed: int, size: int = 128) -> Scene:
    """Scene ``index`` of ``split``, a function of ``(seed, split, index, size)`` only.

    Args:
        split: ``"training"`` (items from the subset's train split) or ``"validation"`` (items
            from its test split).
        index: Non-negative scene number.
        seed: Non-negative integer seed of the whole set.
        size: Canvas side in pixels.
    """
    source_split = SCENE_SPLITS[_check_split(split)]
    size, seed = _check_size(size), _check_seed(seed)
    if index < 0:
        raise ConfigError(f"scene index must be >= 0, got {index}")
    split_code = list(SCENE_SPLITS).index(split)
    # One generator per scene, keyed by (seed, split, index): scenes are independent of how many
    # are made and of the order they are made in.
    rng = np.random.default_rng(np.random.SeedSequence([seed, split_code, index]))
    images, labels = _source(source_split)

    tint = rng.integers(0, _TINT_HIGH, 3)
    count = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    max_side = min(MAX_ITEM_SIDE, size)
    drawn = []
    for _ in range(count):
        source_index = int(rng.integers(len(images)))
        side = int(rng.integers(min(MIN_ITEM_SIDE, max_side), max_side + 1))
        y = int(rng.integers(0, size - side + 1))
        x = int(rng.integers(0, size - side + 1))
        color = rng.integers(_COLOR_LOW, 256, 3)
        drawn.append((source_index, y, x, side, color))
    noise = rng.integers(-_NOISE, _NOISE + 1, (size, size, 3))

    # Visibility front to back: an item sees only what kept items in front of it leave free, and a
    # dropped item neither paints nor hides anything.
    covered = np.zeros((size, size), bool)
    kept: list[SceneInstance] = []
    alphas: list[np.ndarray] = []  # [side, side] float intensities of the kept items
    for source_index, y, x, side, color in reversed(drawn):
        alpha = render_item_alpha(images[source_index], side)
        mask = np.zeros((size, size), bool)
        mask[y : y + side, x : x + side] = alpha > ITEM_THRESHOLD
        mask &= ~covered
        area = int(mask.sum())
        if area < MIN_VISIBLE_PIXELS:
            continue
        covered |= mask
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
        kept.append(
            SceneInstance(
                category=int(labels[source_index]),
                mask=mask,
                box=box,
                source_index=source_index,
                placement=(y, x, side),
                color=(int(color[0]), int(color[1]), int(color[2])),
            )
        )
        alphas.append(alpha.astype(np.float64) / 255.0)
    kept.reverse()
    alphas.reverse()

    # [H, W, 3] float canvas: flat tint, items painted on their (disjoint) visible masks, noise.
    canvas = np.broadcast_to(tint.astype(np.float64), (size, size, 3)).copy()
    for inst, alpha in zip(kept, alphas, strict=True):
        y, x, side = inst.placement
        window = inst.mask[y : y + side, x : x + side]  # [side, side]
        weight = _FLOOR + (1.0 - _FLOOR) * alpha[window]  # [P]
        color = np.asarray(inst.color, np.float64)
        canvas[y : y + side, x : x + side][window] = tint + (color - tint) * weight[:, None]
    image = np.clip(np.floor(canvas + 0.5) + noise, 0, 255).astype(np.uint8)
    return Scene(
        image=image,
        instances=tuple(kept),
        split=split,
        source_split=source_split,
        background=(int(tint[0]), int(tint[1]), int(tint[2])),
    )


def iter_scenes(split: str, count: int, *, seed: int, size: int = 128) -> Iterator[Scene]:
    """Scenes ``0 .. count - 1`` of ``split``, one at a time (see :func:`generate_scene`)."""
    if count < 0:
        raise ConfigError(f"scene count must be >= 0, got {count}")
    for index in range(count):
        yield generate_scene(split, index, seed=seed, size=size)


def generate_scenes(split: str, count: int, *, seed: int, size: int = 128) -> list[Scene]:
    """The first ``count`` scenes of ``split`` in memory (each holds full-size instance masks,
    about ``size**2`` bytes per instance; use :func:`iter_scenes` for large sets)."""
    return list(iter_scenes(split, count, seed=seed, size=size))


def default_scenes_root() -> Path:
    """Where the training tasks generate ``fashion-mnist-scenes`` without ``data.root``:
    ``$INTERNIMAGE_CACHE/fashion-mnist-scenes`` or ``~/.cache/internimage/fashion-mnist-scenes``."""
    cache = os.environ.get("INTERNIMAGE_CACHE") or Path.home() / ".cache" / "internimage"
    return Path(cache) / "fashion-mnist-scenes"


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    # No timestamps or other variable chunks are written, so equal arrays give equal bytes.
    Image.fromarray(array).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _manifest(
    layout: str, train_count: int, val_count: int, seed: int, size: int
) -> dict[str, object]:
    manifest: dict[str, object] = {
        "generator": _GENERATOR_ID,
        "version": _FORMAT_VERSION,
        "train_count": train_count,
        "val_count": val_count,
        "seed": seed,
        "size": size,
    }
    if layout == "ade":
        manifest["classes"] = list(SCENE_CLASSES)
        manifest["labels"] = ("0 = background, k + 1 = Fashion-MNIST class k; read with "
                              "reduce_zero_label=False for 11 classes")
    else:
        manifest["layout"] = layout
        manifest["categories"] = list(FASHION_MNIST_CLASSES)
    return manifest


def _read_manifest(path: Path) -> dict[str, object] | None:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def _listing(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {entry.name for entry in os.scandir(folder) if entry.is_file()}


def write_scenes_ade(
    root: str | Path,
    *,
    train_count: int = 2000,
    val_count: int = 200,
    seed: int = 0,
    size: int = 128,
) -> Path:
    """Write Fashion-MNIST scenes in the ADE20K layout, unless the same set is already there.

    Layout under ``root/ADEChallengeData2016``: ``images/{training,validation}/<name>.png``
    (RGB, lossless), ``annotations/{training,validation}/<name>.png`` (``"L"``: 0 background,
    1..10 the Fashion-MNIST classes), ``classes.txt`` (:data:`SCENE_CLASSES`, one per line,
    background first) and ``scenes.json`` (the parameters). Every file is written atomically
    and ``scenes.json`` last, so an interrupted run is redone, never taken as complete. A
    folder written earlier with other parameters is rewritten (its scene files beyond the new
    counts are removed); a folder that holds anything else is refused.

    Args:
        root: Folder that gets (or has) ``ADEChallengeData2016``.
        train_count: Training scenes (items from the subset's train split).
        val_count: Validation scenes (items from the subset's test split).
        seed: Non-negative integer seed.
        size: Canvas side in pixels.

    Returns:
        The ``ADEChallengeData2016`` folder (give it, or ``root``, to ``ADE20KDataset``).

    Raises:
        DataError: ``root/ADEChallengeData2016`` exists but was not written by this function.
        ConfigError: A negative count or seed, or a size below 20.
    """
    counts = _check_counts(train_count, val_count, seed, size)
    data_dir = Path(root) / ADE_FOLDER
    names = {
        split: [scene_name(split, i) + ".png" for i in range(n)] for split, n in counts.items()
    }

    def write() -> None:
        for split, count in counts.items():
            image_dir = data_dir / "images" / split
            label_dir = data_dir / "annotations" / split
            _prune(split, names[split], image_dir, label_dir)
            for index, scene in enumerate(iter_scenes(split, count, seed=seed, size=size)):
                file_name = names[split][index]
                atomic_write_bytes(image_dir / file_name, _png_bytes(scene.image))
                atomic_write_bytes(label_dir / file_name, _png_bytes(scene.semantic_mask()))
        atomic_write_text(data_dir / "classes.txt", "\n".join(SCENE_CLASSES) + "\n")

    expected = {
        data_dir / kind / split: set(names[split])
        for split in counts for kind in ("images", "annotations")
    }
    return _write_once(data_dir, _manifest("ade", train_count, val_count, seed, size), expected,
                       write, "write_scenes_ade")


def _check_counts(train_count: int, val_count: int, seed: int, size: int) -> dict[str, int]:
    _check_seed(seed)
    _check_size(size)
    counts = {"training": train_count, "validation": val_count}
    for split, count in counts.items():
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ConfigError(f"{split} scene count must be a non-negative integer, got {count!r}")
    return counts


def _prune(split: str, keep: list[str], *folders: Path) -> None:
    """Make ``folders`` and remove scene files of ``split`` beyond the ones kept (a set written
    before with larger counts)."""
    wanted = set(keep)
    prefix = f"scene_{split}_"
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in _listing(folder):
            if stale.startswith(prefix) and stale not in wanted:
                (folder / stale).unlink(missing_ok=True)


def _write_once(
    data_dir: Path,
    wanted: dict[str, object],
    expected: dict[Path, set[str]],
    write: Callable[[], None],
    writer: str,
) -> Path:
    """Run ``write`` unless ``data_dir`` already holds the set described by ``wanted`` (its
    manifest) with every file of ``expected`` (folder -> names) present."""
    manifest_path = data_dir / _MANIFEST
    existing = _read_manifest(manifest_path) if manifest_path.is_file() else None
    if existing is not None and existing.get("generator") != _GENERATOR_ID:
        existing = None
    if existing is None and data_dir.is_dir() and any(data_dir.iterdir()):
        raise DataError(
            f"{data_dir} exists and was not written by {writer} (no {_MANIFEST}); "
            f"choose another root or remove it"
        )
    if existing == wanted and all(names <= _listing(folder) for folder, names in expected.items()):
        return data_dir
    # From here on the folder is ours: drop the manifest first so that a crash midway leaves a
    # set that the next call regenerates.
    manifest_path.unlink(missing_ok=True)
    write()
    atomic_write_text(manifest_path, json.dumps(wanted, indent=2, sort_keys=True) + "\n")
    return data_dir


def write_scenes_coco(
    root: str | Path,
    *,
    train_count: int = 2000,
    val_count: int = 200,
    seed: int = 0,
    size: int = 128,
) -> Path:
    """Write Fashion-MNIST scenes as a COCO instances dataset, unless the same set is there.

    The scenes are those of :func:`write_scenes_ade` with the same arguments. Layout under
    ``root/coco``: ``train/<name>.png`` and ``val/<name>.png`` (RGB, lossless),
    ``annotations/instances_train.json`` and ``instances_val.json`` (COCO format: one
    annotation per visible item with its box ``[x, y, width, height]``, its visible mask as
    compressed RLE, its visible area and ``iscrowd`` 0; categories 1..10 are the Fashion-MNIST
    classes, as in the semantic labels) and ``scenes.json``. Written atomically, manifest last,
    like :func:`write_scenes_ade`.

    Args:
        root: Folder that gets (or has) ``coco``.
        train_count: Training scenes (items from the subset's train split).
        val_count: Validation scenes (items from the subset's test split).
        seed: Non-negative integer seed.
        size: Canvas side in pixels.

    Returns:
        The ``coco`` folder.

    Raises:
        DataError: ``root/coco`` exists but was not written by this function.
        ConfigError: A negative count or seed, or a size below 20.
        MissingDependencyError: pycocotools (the ``det`` extra) is not installed.
    """
    counts = _check_counts(train_count, val_count, seed, size)
    try:
        from pycocotools import mask as coco_mask
    except ImportError:
        raise MissingDependencyError(
            "writing COCO masks needs pycocotools: pip install 'internimage[det]'"
        ) from None
    data_dir = Path(root) / COCO_FOLDER
    folders = {"training": "train", "validation": "val"}
    names = {
        split: [scene_name(split, i) + ".png" for i in range(n)] for split, n in counts.items()
    }
    categories = [
        {"id": k + 1, "name": name, "supercategory": "fashion"}
        for k, name in enumerate(FASHION_MNIST_CLASSES)
    ]

    def write() -> None:
        for split, count in counts.items():
            image_dir = data_dir / folders[split]
            _prune(split, names[split], image_dir)
            (data_dir / "annotations").mkdir(parents=True, exist_ok=True)
            images, annotations = [], []
            for index, scene in enumerate(iter_scenes(split, count, seed=seed, size=size)):
                file_name = names[split][index]
                atomic_write_bytes(image_dir / file_name, _png_bytes(scene.image))
                height, width = scene.image.shape[:2]
                images.append({"id": index + 1, "file_name": file_name, "width": width,
                               "height": height})
                for inst in scene.instances:
                    rle = coco_mask.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
                    x0, y0, x1, y1 = inst.box
                    annotations.append({
                        "id": len(annotations) + 1, "image_id": index + 1,
                        "category_id": inst.category + 1,
                        "bbox": [x0, y0, x1 - x0, y1 - y0], "area": inst.area, "iscrowd": 0,
                        "segmentation": {"size": [height, width],
                                         "counts": rle["counts"].decode("ascii")},
                    })
            payload = {
                "info": {"description": f"Fashion-MNIST scenes ({split}), synthetic: items of "
                         f"the bundled Fashion-MNIST {SCENE_SPLITS[split]} images on "
                         "generated canvases", "version": str(_FORMAT_VERSION)},
                "images": images, "annotations": annotations, "categories": categories,
            }
            atomic_write_text(data_dir / "annotations" / f"instances_{folders[split]}.json",
                              json.dumps(payload, separators=(",", ":")) + "\n")

    expected = {data_dir / folders[split]: set(names[split]) for split in counts}
    expected[data_dir / "annotations"] = {f"instances_{f}.json" for f in folders.values()}
    return _write_once(data_dir, _manifest("coco", train_count, val_count, seed, size),
                       expected, write, "write_scenes_coco")
