"""The bundled demo photos: present, small, readable, and every one named in NOTICE.txt."""

from __future__ import annotations

import re

import pytest
from PIL import Image

from internimage.data import DEMO_PHOTOS, demo_photo, demo_photos_notice
from internimage.data.images import read_image
from internimage.errors import UsageError


def test_every_demo_photo_exists_is_small_and_reads_as_rgb() -> None:
    assert DEMO_PHOTOS == ("astronaut", "chelsea", "coffee")
    for name in DEMO_PHOTOS:
        path = demo_photo(name)
        assert path.is_file() and path.suffix == ".jpg"
        assert path.stat().st_size < 40_000
        with Image.open(path) as picture:
            assert picture.format == "JPEG" and max(picture.size) <= 320
        pixels = read_image(path)
        assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.std() > 10  # a photo


def test_notice_names_every_file_with_source_credit_licence_and_link() -> None:
    notice = demo_photos_notice().read_text(encoding="utf-8")
    folder = demo_photos_notice().parent
    files = sorted(p.name for p in folder.iterdir() if p.name != "NOTICE.txt")
    assert files == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg"]
    for file_name in files:
        section = notice.split(f"\n{file_name} (", 1)[1].split("\n\n", 1)[0]
        for field in ("Source:", "Credit:", "Licence:", "Link:"):
            assert re.search(rf"^\s+{field}\s+\S", section, flags=re.M), (file_name, field)
    assert "NASA" in notice and "public domain" in notice and notice.count("CC0") >= 2


def test_unknown_demo_photo_lists_the_names() -> None:
    with pytest.raises(UsageError, match="astronaut, chelsea, coffee"):
        demo_photo("dog")
