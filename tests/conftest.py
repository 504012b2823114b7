"""Shared fixtures: the upstream golden cases and deterministic seeding."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

GOLDEN_DIR = Path(
    os.environ.get("INTERNIMAGE_GOLDEN", Path(__file__).resolve().parents[2] / "shared" / "golden")
)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """Folder of the cases computed by the upstream code; skips where it is absent."""
    if not (GOLDEN_DIR / "README.md").is_file():
        pytest.skip(
            f"upstream golden cases not found at {GOLDEN_DIR} (set INTERNIMAGE_GOLDEN to the "
            f"folder); they ship beside the repository in CI, not with the package"
        )
    return GOLDEN_DIR

MANIFESTS_DIR = Path(
    os.environ.get("INTERNIMAGE_MANIFESTS",
                   Path(__file__).resolve().parents[2] / "shared" / "manifests")
)


@pytest.fixture(scope="session")
def manifests_dir() -> Path:
    """Folder of the released checkpoints' key manifests; skips where it is absent."""
    if not (MANIFESTS_DIR / "catalog.json").is_file():
        pytest.skip(
            f"checkpoint manifests not found at {MANIFESTS_DIR} (set INTERNIMAGE_MANIFESTS to "
            f"the folder); they ship beside the repository in CI, not with the package"
        )
    return MANIFESTS_DIR


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
