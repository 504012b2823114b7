"""Released-checkpoint rows made in a test: tiny models that the catalogue's builders build.

Imported by test modules in any folder (pytest puts ``tests/`` on ``sys.path`` for its
``conftest.py``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from internimage.catalog import table
from internimage.catalog.table import RELEASES, Release
from internimage.models.config import VARIANTS
from internimage.models.internimage import upstream_arguments

__all__ = ["add_release", "tiny_release"]


def tiny_release(
    name: str, *, like: str, hub_repo: str = "OpenGVLab/InternImage", num_classes: int = 3,
    **backbone: Any,
) -> Release:
    """A row like the release ``like`` (same builder, task and method) for an atto backbone
    with depths 1-1-1-1 (and the given backbone arguments), stored as ``<name>.pth``."""
    arguments = {**upstream_arguments(VARIANTS["internimage_atto"].config),
                 "depths": [1, 1, 1, 1], **backbone}
    arguments.pop("num_classes", None)
    return dataclasses.replace(
        RELEASES[like], name=name, file=f"{name}.pth", aliases=(f"{name}.pth",),
        hub_repo=hub_repo, variant="internimage_atto", num_classes=num_classes,
        backbone=tuple((k, tuple(v) if isinstance(v, list) else v)
                       for k, v in arguments.items()),
        default_for=None, metrics=(),
    )


def add_release(monkeypatch: pytest.MonkeyPatch, release: Release) -> None:
    """Make ``release`` part of the catalogue for the rest of the test."""
    rows = {**table._load(), release.name: release}
    aliases = {**table._aliases(), **{a: release.name for a in (release.name, *release.aliases)}}
    monkeypatch.setattr(table, "_load", lambda: rows)
    monkeypatch.setattr(table, "_aliases", lambda: aliases)
