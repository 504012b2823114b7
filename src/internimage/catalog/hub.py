"""Released files through the Hugging Face cache."""

from __future__ import annotations

from pathlib import Path

from internimage.catalog.table import Release
from internimage.models.pretrained import released_file

__all__ = ["release_file"]


def release_file(release: Release) -> Path:
    """Local copy of a released file (the Hugging Face cache; endpoint ``$HF_ENDPOINT`` if
    set), downloaded once.

    Raises:
        MissingDependencyError: huggingface_hub is not installed.
        WeightsUnavailableError: Not cached and not downloadable; the message says where to put
            the file.
    """
    return released_file(release.file, repo=release.hub_repo)
