"""Make the demo photos bundled in src/internimage/data/assets/photos/.

Usage:
    python scripts/make_demo_photos.py [--output DIR] [--max-side 320] [--quality 90]

Reads three public-domain photos shipped with scikit-image (``skimage.data.astronaut``,
``chelsea`` and ``coffee``; scikit-image is needed only here, at development time, never by the
package), shrinks each so that its longer side is at most ``--max-side`` pixels, writes them as
JPEG and writes ``NOTICE.txt`` with the source, author, licence and link of every file. Running
it again with the same scikit-image and Pillow gives the same files.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image

from internimage.files import atomic_write_bytes, atomic_write_text

_PHOTOS = Path(__file__).resolve().parents[1] / "src" / "internimage" / "data" / "assets" / "photos"

# A bundled file above this size means the settings are off: the photos are for a quick look.
_MAX_BYTES = 40_000

_SKIMAGE_DATA = "https://github.com/scikit-image/scikit-image/tree/main/skimage/data"
_CC0 = "https://creativecommons.org/publicdomain/zero/1.0/"

# What scikit-image's docstrings (skimage/data/_fetchers.py, version 0.26) say of each photo.
SOURCES: dict[str, dict[str, str]] = {
    "astronaut": {
        "title": "Astronaut Eileen Collins",
        "credit": "NASA (NASA Great Images database)",
        "licence": "public domain (a NASA photograph; no known copyright restrictions)",
        "link": "https://flic.kr/p/r9qvLn",
        "skimage": "skimage.data.astronaut()",
    },
    "chelsea": {
        "title": "Chelsea the cat",
        "credit": "Stefan van der Walt (photographer)",
        "licence": f"CC0 1.0, public domain dedication by the photographer ({_CC0})",
        "link": _SKIMAGE_DATA,
        "skimage": "skimage.data.chelsea()",
    },
    "coffee": {
        "title": "Coffee cup (courtesy of Pikolo Espresso Bar)",
        "credit": "Rachel Michetti (photographer)",
        "licence": f"CC0 1.0, public domain dedication by the photographer ({_CC0})",
        "link": _SKIMAGE_DATA,
        "skimage": "skimage.data.coffee()",
    },
}


def shrink(pixels: np.ndarray, max_side: int) -> Image.Image:
    """``pixels`` (uint8 ``[H, W, 3]``) as an RGB image whose longer side is at most
    ``max_side``, resized with Lanczos filtering (antialiased), aspect ratio kept."""
    image = Image.fromarray(np.ascontiguousarray(pixels[..., :3])).convert("RGB")
    scale = max_side / max(image.size)
    if scale < 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, resample=Image.Resampling.LANCZOS)
    return image


def jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    """Baseline JPEG of ``image``, optimised Huffman tables, no metadata."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def notice_text(files: dict[str, str], sizes: dict[str, tuple[int, int]]) -> str:
    """NOTICE.txt: one paragraph per bundled file."""
    lines = [
        "Demo photos bundled with internimage (for `internimage visualize demo:NAME` and",
        "`internimage.data.demo_photo(NAME)`), made by scripts/make_demo_photos.py from the",
        "sample data of scikit-image, shrunk and re-encoded as JPEG. Their provenance and licences",
        "are as scikit-image documents them in skimage/data/_fetchers.py.",
        "",
    ]
    for name, file_name in files.items():
        info = SOURCES[name]
        width, height = sizes[name]
        lines += [
            f"{file_name} ({width}x{height})",
            f"  Title:   {info['title']}",
            f"  Source:  scikit-image sample data, {info['skimage']}",
            f"  Credit:  {info['credit']}",
            f"  Licence: {info['licence']}",
            f"  Link:    {info['link']}",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    """Write the photos and NOTICE.txt."""
    from skimage import data  # development-time only

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=_PHOTOS, help="folder to write to")
    parser.add_argument("--max-side", type=int, default=320, help="longest side in pixels")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality, 1-95")
    args = parser.parse_args()
    files: dict[str, str] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for name in SOURCES:
        image = shrink(getattr(data, name)(), args.max_side)
        payload = jpeg_bytes(image, args.quality)
        if len(payload) > _MAX_BYTES:
            raise SystemExit(
                f"{name}: {len(payload)} bytes at quality {args.quality}, more than {_MAX_BYTES}; "
                f"lower --max-side or --quality"
            )
        files[name] = f"{name}.jpg"
        sizes[name] = image.size
        atomic_write_bytes(args.output / files[name], payload)
        print(f"wrote {args.output / files[name]} ({image.width}x{image.height}, "
              f"{len(payload) / 1000:.1f} kB)")
    atomic_write_text(args.output / "NOTICE.txt", notice_text(files, sizes))
    print(f"wrote {args.output / 'NOTICE.txt'}")


if __name__ == "__main__":
    main()
