"""Three small public-domain photos shipped with the package, for trying models on real images.

``astronaut`` (NASA, public domain), ``chelsea`` (a cat, CC0) and ``coffee`` (a coffee cup,
CC0), taken from scikit-image's sample data by ``scripts/make_demo_photos.py``, at most 320 px on
the longer side. ``NOTICE.txt`` beside them names the source, author, licence and link of each.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from internimage.errors import MissingFileError, UsageError

__all__ = ["DEMO_PHOTOS", "DEMO_PREFIX", "demo_photo", "demo_photos_notice"]

#: Names accepted by :func:`demo_photo`.
DEMO_PHOTOS: tuple[str, ...] = ("astronaut", "chelsea", "coffee")

#: Prefix that makes an image argument of the command line a demo photo (``demo:chelsea``).
DEMO_PREFIX = "demo:"


def _photos_dir() -> Path:
    return Path(str(resources.files("internimage.data").joinpath("assets", "photos")))


def demo_photo(name: str) -> Path:
    """Path of a bundled demo photo (a JPEG file).

    Args:
        name: One of :data:`DEMO_PHOTOS`; a leading ``demo:`` is accepted too.

    Returns:
        The file's path inside the installed package.

    Raises:
        UsageError: ``name`` is not a demo photo (the message lists the names).
        MissingFileError: The package was installed without its data files.
    """
    if name.startswith(DEMO_PREFIX):
        name = name[len(DEMO_PREFIX):]
    if name not in DEMO_PHOTOS:
        raise UsageError(
            f"unknown demo photo {name!r}; available: {', '.join(DEMO_PHOTOS)}"
        )
    path = _photos_dir() / f"{name}.jpg"
    if not path.is_file():
        raise MissingFileError(
            f"demo photo {path} is missing: this installation of internimage lacks its data "
            f"files (reinstall it, e.g. `pip install --force-reinstall internimage`)"
        )
    return path


def demo_photos_notice() -> Path:
    """Path of ``NOTICE.txt``: source, author, licence and link of every demo photo."""
    return _photos_dir() / "NOTICE.txt"
