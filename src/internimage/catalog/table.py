"""The table of every checkpoint released for InternImage and FlashInternImage.

The table is data (``releases.json`` beside this module, made by ``scripts/make_catalog.py``
from the checkpoint manifests). Each row names one released file: its name in this library (the
file's stem on the hub; the file name itself and a few older names are aliases), where it is,
what it was trained on, what it predicts, its published metrics and the upstream constructor
arguments of its backbone. Which rows this library can build is decided by
:mod:`internimage.catalog.builders`.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from internimage.errors import UsageError

__all__ = [
    "FAMILIES",
    "METHODS",
    "RELEASES",
    "TASKS",
    "Release",
    "describe_model",
    "find_release",
    "list_pretrained",
    "markdown_tables",
    "training_task",
]

#: Model families, in the order the tables list them.
FAMILIES = ("internimage", "flash_internimage")
#: Tasks, in the order the tables list them.
TASKS = ("classification", "semantic_segmentation", "instance_segmentation", "detection")
#: How each method is written for people.
METHODS = {
    "classifier": "classifier",
    "upernet": "UperNet",
    "segformer": "SegFormer",
    "mask2former": "Mask2Former",
    "mask_rcnn": "Mask R-CNN",
    "cascade_mask_rcnn": "Cascade Mask R-CNN",
    "dino": "DINO",
    "cb_dino": "DINO",
}
_FAMILY_TITLES = {"internimage": "InternImage", "flash_internimage": "FlashInternImage"}
_TASK_TITLES = {
    "classification": "Image classification",
    "semantic_segmentation": "Semantic segmentation",
    "instance_segmentation": "Instance segmentation (COCO)",
    "detection": "Object detection",
}


def describe_model(release: Release) -> str:
    """What a release is, in words: ``"a Mask2Former model (backbone InternImage-H)"``."""
    size = release.variant.rsplit("_", 1)[1].upper()
    prefix = "CB-" if release.variant.startswith("cb_") else ""
    what = "an image classifier" if release.task == "classification" else (
        f"a {METHODS[release.method]} model")
    return f"{what} (backbone {prefix}{_FAMILY_TITLES[release.family]}-{size})"


def _frozen(value: Any) -> Any:
    """Lists as tuples, so that a row can be hashed and not changed."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


@dataclass(frozen=True)
class Release:
    """One released checkpoint file.

    Attributes:
        name: Its name in this library: the file's stem on the hub.
        file: The file name on the hub.
        aliases: Other names that find it (the file name, the name upstream's README links
            where that differs, names this library used before).
        hub_repo: Hugging Face repository holding the file.
        family: ``"internimage"`` or ``"flash_internimage"``.
        task: ``"classification"``, ``"semantic_segmentation"``, ``"instance_segmentation"``
            or ``"detection"``.
        method: The head or detector (see :data:`METHODS`).
        variant: The backbone, e.g. ``"internimage_t"``.
        builder: What builds the model (``family/method``; see
            :mod:`internimage.catalog.builders`).
        train_data: What the weights were (last) trained on.
        eval_data: What the published metrics were measured on (None without metrics).
        init_from: What the training started from, when upstream says.
        classes: The class list the outputs mean, e.g. ``"imagenet-1k"``, ``"ade20k"``.
        num_classes: Outputs of the classifier in the file (upstream's Cityscapes and
            Mapillary segmentation configs kept ADE20K's 150 outputs and train 19 of them).
        test_size: Classification: the input side. Dense: upstream's test scale
            ``(long side, short side)``.
        crop: Training crop (classification: the side; segmentation: ``(h, w)``); None for
            detection.
        metrics: Published numbers, e.g. ``(("top1", 83.5),)`` or ``(("miou_ss", 47.9), ...)``.
        config: Upstream config the file was trained with (or, when none was released for
            it, the one it was built from: see ``released_config``).
        config_repo: Repository of ``config``.
        released_config: False when upstream released no config for this file.
        backbone: Upstream constructor arguments of the backbone.
        head: Sizes of the head where releases of one method differ (Mask2Former: width,
            queries, heads, FFN widths, layers); None where the method fixes them.
        ema_keys: Pattern of the extra EMA entries the file may hold (mmdet's EMA hook keeps
            the raw weights under ``ema_*`` names beside the EMA ones); None without.
        default_for: The variant whose ``create_model(variant, pretrained=True)`` loads this
            file, if any.
    """

    name: str
    file: str
    aliases: tuple[str, ...]
    hub_repo: str
    family: str
    task: str
    method: str
    variant: str
    builder: str
    train_data: str
    eval_data: str | None
    init_from: str | None
    classes: str
    num_classes: int
    test_size: int | tuple[int, int]
    crop: int | tuple[int, int] | None
    metrics: tuple[tuple[str, float], ...]
    config: str
    config_repo: str
    released_config: bool
    backbone: tuple[tuple[str, Any], ...]
    head: tuple[tuple[str, Any], ...] | None
    ema_keys: str | None
    default_for: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Release:
        """A release from one row of ``releases.json``.

        Raises:
            ValueError: A field is missing or unknown.
        """
        fields = set(cls.__dataclass_fields__)
        unknown, missing = set(row) - fields, fields - set(row)
        if unknown or missing:
            raise ValueError(
                f"release row {row.get('name')!r}: unknown fields {sorted(unknown)}, "
                f"missing fields {sorted(missing)}"
            )
        values = {key: _frozen(value) for key, value in row.items()}
        values["metrics"] = tuple((k, float(v)) for k, v in row["metrics"].items())
        values["backbone"] = tuple((k, _frozen(v)) for k, v in row["backbone"].items())
        if row["head"] is not None:
            values["head"] = tuple((k, _frozen(v)) for k, v in row["head"].items())
        return cls(**values)

    @property
    def url(self) -> str:
        """Download address on the Hugging Face hub."""
        return f"https://huggingface.co/{self.hub_repo}/resolve/main/{self.file}"

    @property
    def buildable(self) -> bool:
        """Whether this library builds the model of this file (and so loads it)."""
        from internimage.catalog.builders import BUILDERS

        return self.builder in BUILDERS

    def backbone_arguments(self) -> dict[str, Any]:
        """Upstream constructor arguments of the backbone (lists as upstream writes them)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.backbone}

    def head_arguments(self) -> dict[str, Any]:
        """The head sizes of :attr:`head` (empty where the method fixes them)."""
        return dict(self.head or ())

    def is_known_extra(self, key: str) -> bool:
        """Whether a key of the released file is an extra that a load leaves out (the raw
        ``ema_*`` copies of mmdet's EMA hook), not a model weight."""
        return self.ema_keys is not None and key.startswith("ema_")

    def metric(self, key: str) -> float | None:
        """A published metric (e.g. ``"top1"``, ``"miou_ss"``, ``"box_ap"``), None if absent."""
        return dict(self.metrics).get(key)

    def describe_metrics(self) -> str:
        """The published metrics in a few words, ``"-"`` without any."""
        return ", ".join(f"{k} {v}" for k, v in self.metrics) or "-"

    def describe_size(self) -> str:
        """Input size in a few words: ``224`` or ``1333x800``."""
        if isinstance(self.test_size, tuple):
            return "x".join(str(v) for v in self.test_size)
        return str(self.test_size)


@cache
def _load() -> dict[str, Release]:
    text = resources.files("internimage.catalog").joinpath("releases.json").read_text()
    rows = json.loads(text)["releases"]
    return {row["name"]: Release.from_row(row) for row in rows}


class _Releases(Mapping[str, Release]):
    """Name -> release, read from the package's table on first use."""

    def __getitem__(self, name: str) -> Release:
        return _load()[name]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(_load())

    def __len__(self) -> int:
        return len(_load())

    def __repr__(self) -> str:
        return f"RELEASES({len(self)} released checkpoints)"


#: Every released checkpoint, by name, in the table's order.
RELEASES: Mapping[str, Release] = _Releases()


@cache
def _aliases() -> dict[str, str]:
    names: dict[str, str] = {}
    for release in RELEASES.values():
        for alias in (release.name, *release.aliases):
            if names.setdefault(alias, release.name) != release.name:
                raise ValueError(f"the alias {alias!r} names two releases")
    return names


def find_release(name: str) -> Release:
    """The release called ``name`` (its name, its file name or another alias).

    Raises:
        UsageError: No release has that name; the message suggests close ones.
    """
    target = _aliases().get(name) or _aliases().get(name.rsplit("/", 1)[-1])
    if target is None:
        close = difflib.get_close_matches(name, list(_aliases()), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UsageError(
            f"no released checkpoint is called {name!r}{hint} (`internimage list` shows them all)"
        )
    return RELEASES[target]


# Release.task -> the training task (``TrainConfig.task``) whose tools run such a model.
_TRAINING_TASKS = {
    "classification": "classification",
    "semantic_segmentation": "segmentation",
    "instance_segmentation": "detection",
    "detection": "detection",
}


def training_task(name: str) -> str | None:
    """The task (``classification``, ``segmentation`` or ``detection``) of a model name: a
    variant is a classifier, a release has its task; None for a name that is neither."""
    from internimage.models.config import VARIANTS

    if name in VARIANTS:
        return "classification"
    target = _aliases().get(name)
    return None if target is None else _TRAINING_TASKS[RELEASES[target].task]


def list_pretrained(
    pattern: str = "*",
    *,
    family: str | None = None,
    task: str | None = None,
    method: str | None = None,
    variant: str | None = None,
    classes: str | None = None,
    buildable: bool | None = None,
) -> list[str]:
    """Names of released checkpoints, in the table's order, filtered.

    Args:
        pattern: Shell-style pattern over the name or an alias (``"*ade20k*"``).
        family: ``"internimage"`` or ``"flash_internimage"``.
        task: See :data:`TASKS`.
        method: See :data:`METHODS`.
        variant: The backbone, e.g. ``"internimage_t"``.
        classes: The class list, e.g. ``"coco"``.
        buildable: Only those this library builds (True) or does not build yet (False).

    Raises:
        UsageError: A family, task or method that does not exist.
    """
    for value, allowed, what in ((family, FAMILIES, "family"), (task, TASKS, "task"),
                                 (method, tuple(METHODS), "method")):
        if value is not None and value not in allowed:
            raise UsageError(f"unknown {what} {value!r}; choose from {', '.join(allowed)}")
    names = []
    for release in RELEASES.values():
        if not any(fnmatch.fnmatchcase(n, pattern) for n in (release.name, *release.aliases)):
            continue
        wanted = ((family, release.family), (task, release.task), (method, release.method),
                  (variant, release.variant), (classes, release.classes))
        if any(want is not None and want != have for want, have in wanted):
            continue
        if buildable is not None and release.buildable != buildable:
            continue
        names.append(release.name)
    return names


def markdown_tables() -> str:
    """The README's tables of released checkpoints: one per family and task."""
    sections = []
    for family in FAMILIES:
        for task in TASKS:
            rows = [r for r in RELEASES.values() if r.family == family and r.task == task]
            if not rows:
                continue
            lines = [
                f"**{_FAMILY_TITLES[family]}: {_TASK_TITLES[task].lower()}** ({len(rows)})",
                "",
                "| name | method | classes | size | published | loads |",
                "|---|---|---|---|---|---|",
            ]
            for r in rows:
                lines.append(
                    f"| `{r.name}` | {METHODS[r.method]} | {r.classes} "
                    f"({r.num_classes}) | {r.describe_size()} | {r.describe_metrics()} | "
                    f"{'yes' if r.buildable else 'not yet'} |"
                )
            sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n"
