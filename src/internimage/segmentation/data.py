"""Semantic segmentation datasets: ADE20K's layout and generic image + mask folders.

Items are ``(image uint8 [3, H, W], mask int64 [H, W])`` tensors. Images go through Pillow and
:func:`internimage.data.images.to_rgb8`, so any mode and bit depth works. Masks are read as
*indices*, never as colours: ``"L"``, ``"P"`` (the palette index, not its colour), ``"1"`` and
16/32-bit integer modes keep their values; an RGB(A) mask is refused.

Label convention (as mmseg): ``reduce_zero_label=True`` makes file value 0 the ignore index
(255) and value ``k`` label ``k - 1``, for datasets such as ADE20K whose 0 means "unlabelled".
Values must then lie in ``[0, num_classes)`` or equal the ignore index; this is checked when an
item is read (reading every mask up front would take minutes on ADE20K), while the pairing of
images with masks is checked when the dataset is made.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from internimage.data.images import DECODE_ERRORS, read_image
from internimage.errors import ConfigError, DataError, MissingFileError

__all__ = [
    "ADE20K_CLASSES",
    "ADE20KDataset",
    "IGNORE_INDEX",
    "SegmentationFolderDataset",
    "SegmentationBatch",
    "collate_padded",
    "collate_segmentation",
    "read_classes_file",
    "read_image",
    "read_mask",
]

#: Label of pixels that the loss and the metrics skip.
IGNORE_INDEX = 255

#: The 150 ADE20K (SceneParsing, ADEChallengeData2016) classes, in label order after
#: ``reduce_zero_label`` (file value ``k`` is class ``k - 1``). The short names mmseg uses; mmseg
#: spells the eighth ``"bed "`` with a stray trailing space, which is dropped here.
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van",
    "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle",
    "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase",
    "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

ADE_SPLITS = ("training", "validation")
_ADE_FOLDER = "ADEChallengeData2016"
_CLASSES_FILE = "classes.txt"
# Mask modes whose values are indices. "I;16*" are 16-bit unsigned, "I" 32-bit signed (some
# Pillow versions open 16-bit PNGs so), "1" is 0/1.
_INDEX_MODES = frozenset({"1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N"})


def _image_suffixes() -> frozenset[str]:
    from PIL import Image

    return frozenset(ext.lower() for ext in Image.registered_extensions())


def read_mask(path: str | Path) -> np.ndarray:
    """int64 ``[H, W]`` label indices of a mask file (``"L"``, ``"P"``, ``"1"`` or 16/32-bit).

    A palette (``"P"``) mask gives its index values, not the palette colours.

    Raises:
        DataError: The file cannot be decoded, or it holds colours (RGB, RGBA, ...) rather than
            indices.
    """
    from PIL import Image

    try:
        with Image.open(path) as mask:
            mode = mask.mode
            if mode not in _INDEX_MODES:
                raise DataError(
                    f"mask {path} has mode {mode!r}; a mask must be an index image "
                    f"(mode 'L', 'P' or 16-bit 'I;16'), not colours"
                )
            values = np.asarray(mask)  # decodes; for "P" these are the palette indices
    except DECODE_ERRORS as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"cannot read mask {path}: {type(error).__name__}: {error}") from None
    return values.astype(np.int64)


def read_classes_file(path: str | Path) -> tuple[str, ...]:
    """Class names from a text file, one per line (blank lines and surrounding spaces dropped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read class list {path}: {error}") from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not names:
        raise DataError(f"class list {path} names no classes")
    return names


def _files_by_stem(folder: Path, suffixes: frozenset[str], what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise MissingFileError(f"{what} folder {folder} does not exist")
    found: dict[str, Path] = {}
    # os.scandir: ADE20K has 20k files per folder, and this runs at every construction.
    for entry in os.scandir(folder):
        path = Path(entry.path)
        # Dot files include the temporaries of atomic writes in progress.
        if entry.name.startswith(".") or path.suffix.lower() not in suffixes or not entry.is_file():
            continue
        if path.stem in found:
            raise DataError(
                f"two {what} files share the stem {path.stem!r}: {found[path.stem]} and {path}"
            )
        found[path.stem] = path
    if not found:
        raise DataError(f"{what} folder {folder} holds no image files")
    return found


class SegmentationFolderDataset(Dataset):
    """Images in one folder and their masks in another, paired by file stem.

    Args:
        image_dir: Folder of images (any format Pillow reads).
        mask_dir: Folder of index masks, one per image with the same stem (e.g. ``a.jpg`` and
            ``a.png``).
        classes: Class names in label order (after ``reduce_zero_label``).
        ignore_index: Label that marks pixels to skip; a mask may hold it besides the classes.
            Must not be a class label.
        reduce_zero_label: Map file value 0 to ``ignore_index`` and ``k`` to ``k - 1``.

    Raises:
        MissingFileError: A folder does not exist.
        DataError: A folder holds no images, an image has no mask or a mask no image, or two
            files of a folder share a stem.
        ConfigError: No classes, or ``ignore_index`` is a class label.
    """

    def __init__(
        self,
        image_dir: str | Path,
        mask_dir: str | Path,
        classes: Sequence[str],
        *,
        ignore_index: int = IGNORE_INDEX,
        reduce_zero_label: bool = False,
    ) -> None:
        self.classes = tuple(classes)
        if not self.classes:
            raise ConfigError("a segmentation dataset needs at least one class")
        if 0 <= ignore_index < len(self.classes):
            raise ConfigError(
                f"ignore_index {ignore_index} is a class label (there are {len(self.classes)} "
                f"classes); use a value outside [0, {len(self.classes)})"
            )
        self.ignore_index = int(ignore_index)
        self.reduce_zero_label = bool(reduce_zero_label)
        self.image_dir, self.mask_dir = Path(image_dir), Path(mask_dir)
        suffixes = _image_suffixes()
        images = _files_by_stem(self.image_dir, suffixes, "image")
        masks = _files_by_stem(self.mask_dir, suffixes, "mask")
        no_mask = sorted(set(images) - set(masks))
        if no_mask:
            more = f" (and {len(no_mask) - 1} more images)" if len(no_mask) > 1 else ""
            raise DataError(
                f"missing mask for {images[no_mask[0]]}: no file {no_mask[0]}.* in "
                f"{self.mask_dir}{more}"
            )
        no_image = sorted(set(masks) - set(images))
        if no_image:
            more = f" (and {len(no_image) - 1} more masks)" if len(no_image) > 1 else ""
            raise DataError(
                f"mask {masks[no_image[0]]} has no image: no file {no_image[0]}.* in "
                f"{self.image_dir}{more}"
            )
        self.samples: list[tuple[Path, Path]] = [(images[s], masks[s]) for s in sorted(images)]

    @property
    def num_classes(self) -> int:
        """Number of classes (labels ``0 .. num_classes - 1``)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def _labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Map file values ``[H, W]`` to labels and check their range."""
        ignored = raw == self.ignore_index
        if self.reduce_zero_label:
            ignored |= raw == 0
            labels = raw - 1
        else:
            labels = raw
        bad = ~ignored & ((labels < 0) | (labels >= self.num_classes))
        if bad.any():
            value = int(raw[bad].flat[0])
            count = int(bad.sum())
            after = (
                f" (label {value - 1} after reduce_zero_label)" if self.reduce_zero_label else ""
            )
            raise DataError(
                f"mask {path} holds value {value}{after} in {count} pixels, outside the "
                f"{self.num_classes} classes [0, {self.num_classes}) and not the ignore index "
                f"{self.ignore_index}"
            )
        return np.where(ignored, self.ignore_index, labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.samples[index]
        image = read_image(image_path)  # [H, W, 3]
        raw = read_mask(mask_path)  # [H, W]
        if image.shape[:2] != raw.shape:
            raise DataError(
                f"image {image_path} is {image.shape[1]}x{image.shape[0]} (WxH) but its mask "
                f"{mask_path} is {raw.shape[1]}x{raw.shape[0]}"
            )
        labels = self._labels(raw, mask_path)
        chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return chw, torch.from_numpy(labels.astype(np.int64, copy=False))


def _ade_data_dir(root: Path) -> Path:
    if (root / _ADE_FOLDER).is_dir():
        return root / _ADE_FOLDER
    if (root / "images").is_dir() and (root / "annotations").is_dir():
        return root
    raise MissingFileError(
        f"no ADE20K layout at {root}: expected {root / _ADE_FOLDER} or images/ and annotations/ "
        f"folders in it"
    )


class ADE20KDataset(SegmentationFolderDataset):
    """ADE20K's layout: ``images/<split>/*.jpg`` with ``annotations/<split>/*.png``.

    Class names come from the ``classes`` argument, else a ``classes.txt`` in the dataset folder
    (or in ``root``), else :data:`ADE20K_CLASSES`. A ``classes.txt`` names the *file values*
    0, 1, 2, ... in order, so with ``reduce_zero_label=True`` its first name (the value-0 class,
    e.g. "background") is dropped. Without a file, ``reduce_zero_label=False`` gives
    ``("background", *ADE20K_CLASSES)``.

    Args:
        root: The ``ADEChallengeData2016`` folder or the folder that contains it.
        split: ``"training"`` or ``"validation"``.
        reduce_zero_label: File value 0 -> ignored (255), ``k`` -> ``k - 1`` (right for real
            ADE20K, where 0 is "unlabelled"; use ``False`` for the Fashion-MNIST scenes, whose
            0 is the background class).
        classes: Class names in label order (after ``reduce_zero_label``).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        reduce_zero_label: bool = True,
        classes: Sequence[str] | None = None,
    ) -> None:
        if split not in ADE_SPLITS:
            raise ConfigError(f"unknown ADE20K split {split!r}; choose one of {list(ADE_SPLITS)}")
        self.root = Path(root)
        self.data_dir = _ade_data_dir(self.root)
        self.split = split
        if classes is None:
            classes = self._default_classes(reduce_zero_label)
        super().__init__(
            self.data_dir / "images" / split,
            self.data_dir / "annotations" / split,
            classes,
            ignore_index=IGNORE_INDEX,
            reduce_zero_label=reduce_zero_label,
        )

    def _default_classes(self, reduce_zero_label: bool) -> tuple[str, ...]:
        for folder in dict.fromkeys((self.data_dir, self.root)):
            path = folder / _CLASSES_FILE
            if path.is_file():
                names = read_classes_file(path)
                if not reduce_zero_label:
                    return names
                if len(names) < 2:
                    raise DataError(
                        f"class list {path} names only the value-0 class, which "
                        f"reduce_zero_label ignores"
                    )
                return names[1:]
        return ADE20K_CLASSES if reduce_zero_label else ("background", *ADE20K_CLASSES)


def collate_padded(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]],
    pad_value: int = 0,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack items of different sizes, padding bottom/right to the largest height and width.

    Args:
        batch: ``(image [3, H_i, W_i], mask [H_i, W_i])`` items.
        pad_value: Image value of the padding.
        ignore_index: Mask value of the padding, so the loss skips it.

    Returns:
        ``(images [B, 3, H, W] in the images' dtype (uint8 from the datasets), masks int64
        [B, H, W])``.
    """
    if not batch:
        return torch.empty(0, 3, 0, 0, dtype=torch.uint8), torch.empty(0, 0, 0, dtype=torch.int64)
    for position, (image, mask) in enumerate(batch):
        if image.dim() != 3 or mask.dim() != 2 or image.shape[1:] != mask.shape:
            raise ValueError(
                f"batch item {position}: expected image [C, H, W] and mask [H, W] of one size, "
                f"got {tuple(image.shape)} and {tuple(mask.shape)}"
            )
    channels = batch[0][0].shape[0]
    height = max(image.shape[1] for image, _ in batch)
    width = max(image.shape[2] for image, _ in batch)
    first = batch[0][0]
    images = torch.full(
        (len(batch), channels, height, width), pad_value, dtype=first.dtype, device=first.device
    )
    masks = torch.full(
        (len(batch), height, width), ignore_index, dtype=torch.int64, device=first.device
    )
    for position, (image, mask) in enumerate(batch):
        h, w = mask.shape
        images[position, :, :h, :w] = image
        masks[position, :h, :w] = mask
    return images, masks


#: ``(images uint8 [B, 3, H, W], masks int64 [B, H, W], sizes int64 [B, 2])`` where ``sizes``
#: holds each item's ``(height, width)`` before padding.
SegmentationBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def collate_segmentation(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]], *, ignore_index: int = IGNORE_INDEX
) -> SegmentationBatch:
    """:func:`collate_padded` plus the size of every item, so that evaluation can undo the
    padding and resize each image as it would resize it alone.

    Args:
        batch: ``(image [3, H_i, W_i], mask [H_i, W_i])`` items.
        ignore_index: Mask value of the padding.

    Returns:
        ``(images, masks, sizes)``, see :data:`SegmentationBatch`.
    """
    images, masks = collate_padded(batch, ignore_index=ignore_index)
    sizes = torch.tensor([tuple(mask.shape) for _, mask in batch], dtype=torch.int64)
    return images, masks, sizes.reshape(len(batch), 2)
