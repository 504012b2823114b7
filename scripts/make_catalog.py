"""Write the package's table of released checkpoints from the checkpoint manifests.

    python scripts/make_catalog.py [--manifests ../shared/manifests] [--check]

The manifests' ``catalog.json`` lists every checkpoint released for InternImage and
FlashInternImage, read from the upstream READMEs, configs and hub listings. This script keeps
what a user of the library needs (name, file, hub repository, task, method, data, classes,
sizes, published metrics, the backbone's constructor arguments) in
``src/internimage/catalog/releases.json``, and writes the README's tables of released
checkpoints from it (between the ``releases:start`` and ``releases:end`` markers). ``--check``
only compares and exits 1 on a difference (the test suite runs the same comparisons).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "src" / "internimage" / "catalog" / "releases.json"
README = ROOT / "README.md"
README_START = "<!-- releases:start (made by scripts/make_catalog.py) -->\n"
README_END = "<!-- releases:end -->\n"
DEFAULT_MANIFESTS = ROOT.parent / "shared" / "manifests"

# The checkpoint each variant's ``create_model(name, pretrained=True)`` loads: the ImageNet-1K
# classifier at the variant's native size.
DEFAULT_WEIGHTS = {
    "internimage_t_1k_224.pth": "internimage_t",
    "internimage_s_1k_224.pth": "internimage_s",
    "internimage_b_1k_224.pth": "internimage_b",
    "internimage_l_22kto1k_384.pth": "internimage_l",
    "internimage_xl_22kto1k_384.pth": "internimage_xl",
    "internimage_h_22kto1k_640.pth": "internimage_h",
    "internimage_g_22kto1k_512.pth": "internimage_g",
    "flash_intern_image_t_1k_224.pth": "flash_internimage_t",
    "flash_intern_image_s_1k_224.pth": "flash_internimage_s",
    "flash_intern_image_b_1k_224.pth": "flash_internimage_b",
    "flash_intern_image_l_22kto1k_384.pth": "flash_internimage_l",
}

# Short names the library used before the table existed; they keep working.
LEGACY_NAMES = {
    **{f"upernet_internimage_{k}_{s}_160k_ade20k.pth": f"upernet_internimage_{k}_ade20k"
       for k, s in (("t", 512), ("s", 512), ("b", 512), ("l", 640), ("xl", 640), ("h", 896))},
    **{f"mask_rcnn_internimage_{k}_fpn_{x}_coco.pth": f"mask_rcnn_internimage_{k}_{x}_coco"
       for k in ("t", "s", "b") for x in ("1x", "3x")},
}


def class_list(entry: dict[str, Any]) -> str:
    """The name of the class list the model predicts (what its labels mean)."""
    # What the model was last trained and evaluated on (not what it started from).
    text = f"{entry['dataset'].get('eval')} {entry['dataset'].get('train')}"
    n = entry["num_classes"]
    rules = (
        ("iNaturalist 2018", "inaturalist-2018"), ("COCO-Stuff", "coco-stuff"),
        ("Context-59", "pascal-context-59"), ("NYU", "nyu-depth-v2-40"), ("LVIS", "lvis-v1"),
        ("OpenImages", "openimages-v6"), ("VOC", "pascal-voc"), ("Cityscapes", "cityscapes"),
        ("Mapillary", "cityscapes"), ("ADE20K", "ade20k"),
    )
    if n == 21841:
        return "imagenet-22k"
    if n == 1000:
        return "imagenet-1k"
    for needle, name in rules:
        if needle in text:
            return name
    if entry["task"] != "classification" and n == 80:
        return "coco"
    if n == 20:
        return "pascal-voc"
    raise SystemExit(f"no class list for {entry['file']} ({n} classes): add a rule")


def builder(entry: dict[str, Any]) -> str:
    """Which architecture builds the file: family and method, and the odd class apart."""
    if entry["model_class"] == "InternImageMetaFormer":
        return f"{entry['family']}/metaformer_classifier"
    return f"{entry['family']}/{entry['method']}"


def variant(entry: dict[str, Any]) -> str:
    size = entry["backbone"]
    if size.startswith("cb-"):
        return f"cb_{entry['family']}_{size[3:]}"
    return f"{entry['family']}_{size}"


def size(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value


def mask2former_head(keys: dict[str, list[int]]) -> dict[str, int]:
    """The Mask2Former head's sizes, read from a manifest's shapes (they differ between
    releases: 100 or 200 queries, FFNs of 1024, 2048 or 4096)."""
    prefix = "decode_head."
    queries, hidden = keys[prefix + "query_feat.weight"]
    encoder = {k.split(".")[4] for k in keys
               if k.startswith(prefix + "pixel_decoder.encoder.layers.")}
    decoder = {k.split(".")[3] for k in keys
               if k.startswith(prefix + "transformer_decoder.layers.")}
    # attention_weights: heads x levels (3) x points (4) rows.
    weights = keys[prefix + "pixel_decoder.encoder.layers.0.attentions.0.attention_weights.weight"]
    return {
        "hidden_dim": hidden,
        "num_queries": queries,
        "num_heads": weights[0] // 12,
        "encoder_ffn": keys[prefix + "pixel_decoder.encoder.layers.0.ffns.0.layers.0.0.weight"][0],
        "decoder_ffn": keys[prefix + "transformer_decoder.layers.0.ffns.0.layers.0.0.weight"][0],
        "encoder_layers": len(encoder),
        "decoder_layers": len(decoder),
    }


def row(entry: dict[str, Any], manifests: Path) -> dict[str, Any]:
    readme_file = entry["file"]
    file = entry.get("hub_file", readme_file)  # the README's link is wrong for one file
    name = file.removesuffix(".pth")
    aliases = [file]
    if readme_file != file:
        aliases += [readme_file.removesuffix(".pth"), readme_file]
    if readme_file in LEGACY_NAMES:
        aliases.append(LEGACY_NAMES[readme_file])
    arch = {k: v for k, v in entry["arch"].items() if k not in ("drop_path_rate", "with_cp")}
    extra = entry.get("extra_keys")
    return {
        "name": name,
        "file": file,
        "aliases": aliases,
        "hub_repo": entry["hub_repo"],
        "family": entry["family"],
        "task": entry["task"],
        "method": entry["method"],
        "variant": variant(entry),
        "builder": builder(entry),
        "train_data": entry["dataset"].get("train"),
        "eval_data": entry["dataset"].get("eval"),
        "init_from": entry["dataset"].get("init_from"),
        "classes": class_list(entry),
        "num_classes": entry["num_classes"],
        "test_size": size(entry["test_size"]),
        "crop": size(entry.get("crop")),
        "metrics": entry["published"],
        # Files without a released config were built from the closest one (built_from).
        "config": entry.get("config") or entry["built_from"],
        "config_repo": entry["config_repo"],
        "released_config": "built_from" not in entry,
        "backbone": arch,
        # Head sizes that differ between releases of one method, read from the manifest.
        "head": (mask2former_head(json.loads((manifests / entry["manifest"]).read_text())["keys"])
                 if entry["method"] == "mask2former" else None),
        "ema_keys": extra["pattern"] if extra else None,
        "default_for": DEFAULT_WEIGHTS.get(file),
    }


def make_table(manifests: Path) -> str:
    catalog = json.loads((manifests / "catalog.json").read_text())
    rows = [row(entry, manifests) for entry in catalog["entries"]]
    names = [r["name"] for r in rows]
    if len(set(names)) != len(names):
        raise SystemExit("two files give the same name")
    table = {
        "about": "Every checkpoint released for InternImage and FlashInternImage; made by "
                 "scripts/make_catalog.py from the checkpoint manifests, do not edit by hand.",
        "upstream": catalog["upstream"],
        "releases": rows,
    }
    return json.dumps(table, indent=1) + "\n"


def readme_with_tables(readme: str, tables: str) -> str:
    """``readme`` with the text between the markers replaced by ``tables``."""
    start = readme.index(README_START) + len(README_START)
    end = readme.index(README_END)
    return readme[:start] + "\n" + tables + "\n" + readme[end:]


def _write(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifests", type=Path, default=DEFAULT_MANIFESTS)
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on a change")
    args = parser.parse_args()
    text = make_table(args.manifests)
    if args.check:
        same = TABLE.is_file() and TABLE.read_text() == text
        print("releases.json is up to date" if same else "releases.json is out of date")
        if not same:
            return 1
    else:
        _write(TABLE, text)
        print(f"wrote {TABLE.relative_to(ROOT)}: {len(json.loads(text)['releases'])} releases")
    # The README's tables come from the package's table (as installed from this checkout).
    sys.path.insert(0, str(ROOT / "src"))
    from internimage.catalog.table import markdown_tables

    readme = README.read_text()
    updated = readme_with_tables(readme, markdown_tables())
    if args.check:
        print("README tables are up to date" if updated == readme else
              "README tables are out of date")
        return 0 if updated == readme else 1
    _write(README, updated)
    print("wrote the README's tables")
    return 0


if __name__ == "__main__":
    sys.exit(main())
