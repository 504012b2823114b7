"""Make the class-balanced Fashion-MNIST subset bundled in src/internimage/data/assets/.

Usage:
    python scripts/make_fashion_mnist_subset.py [--root /usr/share/datasets/fashion-mnist]

Reads the full IDX files (Debian package ``dataset-fashion-mnist``), draws the same number of
images per class from each split with a fixed seed, and writes a compressed npz. Running it again
gives the same file contents.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from internimage.data.fashion_mnist import load_fashion_mnist

_ASSETS = Path(__file__).resolve().parents[1] / "src" / "internimage" / "data" / "assets"
SEED = 20171025  # fixed so the subset is reproducible


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices with ``per_class`` random picks from every class, in random order."""
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < per_class:
            raise ValueError(f"class {cls} has {len(members)} images, fewer than {per_class}")
        chosen.append(rng.choice(members, size=per_class, replace=False))
    picks = np.concatenate(chosen)
    return picks[rng.permutation(len(picks))]


def main() -> None:
    """Write the subset npz."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="folder with the full IDX files")
    parser.add_argument("--train-per-class", type=int, default=2000)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--output", type=Path, default=_ASSETS / "fashion_mnist_subset.npz")
    args = parser.parse_args()
    rng = np.random.default_rng(SEED)
    arrays = {}
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        images, labels = load_fashion_mnist(args.root, split)
        picks = balanced_indices(labels, per_class, rng)
        arrays[f"{split}_images"] = images[picks]
        arrays[f"{split}_labels"] = labels[picks].astype(np.uint8)
        # Indices into the original split, so the subset can be traced back.
        arrays[f"{split}_source_index"] = picks.astype(np.int32)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(args.output)
    sizes = {k: v.shape for k, v in arrays.items()}
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.2f} MB): {sizes}")


if __name__ == "__main__":
    main()
