"""The catalogue of released checkpoints: its table, its names, and ``verify_checkpoint`` on
every released file's manifest and on real small files."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import save_file

import internimage
from catalog_rows import add_release, tiny_release
from hub_cache import hub_snapshot, offline_hub
from internimage.catalog import (
    RELEASES,
    checkpoint_shapes,
    find_release,
    list_pretrained,
    verify_checkpoint,
)
from internimage.catalog.table import training_task
from internimage.errors import CheckpointFileError, UsageError, WeightsUnavailableError
from internimage.models import PRETRAINED, VARIANTS
from internimage.models.flash_internimage import build_upstream_backbone

ROOT = Path(__file__).resolve().parents[1]

#: Released checkpoints whose model this library does not build yet. The list must stay true:
#: when one of them becomes buildable, the test below fails until it is taken off.
NOT_YET_BUILT = {
    # InternImage-H with upstream's iNaturalist meta-data head (InternImageMetaFormer).
    "internimage_h_22ktoinat18_384",
    # DINO and CB-InternImage DINO.
    "dino_4scale_cbinternimage_h_objects365_20classes",
    "dino_4scale_cbinternimage_h_objects365_80classes",
    "dino_4scale_cbinternimage_h_objects365_coco", "dino_4scale_cbinternimage_h_objects365_lvis",
    "dino_4scale_cbinternimage_h_objects365_openimages",
    "dino_4scale_cbinternimage_h_objects365_voc0712", "dino_4scale_internimage_t_1x_coco",
    "dino_4scale_internimage_l_1x_coco_0.1x_backbone_lr",
    "dino_4scale_internimage_l_1x_coco_layer_wise_lr", "dino_4scale_internimage_h_objects365_coco",
    "dino_4scale_internimage_g_objects365_80classes", "dino_4scale_internimage_g_objects365_coco",
    # SegFormer.
    "segformer_internimage_l_512x1024_160k_mapillary2cityscapes",
    "segformer_internimage_l_512x1024_80k_mapillary",
    "segformer_internimage_xl_512x1024_160k_mapillary2cityscapes",
    "segformer_internimage_xl_512x1024_80k_mapillary",
    # FlashInternImage (DCNv4): DINO.
    "dino_4scale_flash_internimage_t_1x_coco", "dino_4scale_flash_internimage_s_1x_coco",
    "dino_4scale_flash_internimage_b_1x_coco", "dino_4scale_flash_internimage_l_1x_coco",
}


def _make_catalog_script() -> ModuleType:
    path = ROOT / "scripts" / "make_catalog.py"
    spec = importlib.util.spec_from_file_location("make_catalog_script", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _manifest(manifests_dir: Path, file: str) -> dict:
    """The manifest of a released file; manifests are named after the file the upstream
    README links, which for one file is not the hub's name (the release's last alias)."""
    path = manifests_dir / f"{Path(file).stem}.keys.json"
    if not path.is_file():
        path = manifests_dir / f"{Path(find_release(file).aliases[-1]).stem}.keys.json"
    return json.loads(path.read_text())


def test_the_package_table_is_made_from_the_manifests(manifests_dir: Path) -> None:
    script = _make_catalog_script()
    assert (ROOT / "src/internimage/catalog/releases.json").read_text() == script.make_table(
        manifests_dir), "releases.json is stale: run python scripts/make_catalog.py"


def test_the_readme_tables_are_made_from_the_package_table() -> None:
    script = _make_catalog_script()
    readme = (ROOT / "README.md").read_text()
    assert script.readme_with_tables(readme, internimage.catalog.markdown_tables()) == readme, (
        "the README's release tables are stale: run python scripts/make_catalog.py")


def test_every_released_file_is_in_the_table_once(manifests_dir: Path) -> None:
    catalog = json.loads((manifests_dir / "catalog.json").read_text())
    assert len(RELEASES) == len(catalog["entries"]) == 85
    for entry in catalog["entries"]:
        # The file name as the READMEs link it finds its row, and the row keeps its facts.
        release = find_release(entry["file"])
        assert release.file == entry.get("hub_file", entry["file"])
        assert dict(release.metrics) == entry["published"]
        assert (release.task, release.method, release.num_classes) == (
            entry["task"], entry["method"], entry["num_classes"])
    counts = {(f, t): len(list_pretrained(family=f, task=t))
              for f in ("internimage", "flash_internimage")
              for t in ("classification", "semantic_segmentation", "instance_segmentation",
                        "detection")}
    assert sum(v for (f, _), v in counts.items() if f == "internimage") == 60
    assert sum(v for (f, _), v in counts.items() if f == "flash_internimage") == 25


def test_every_buildable_release_verifies_against_its_manifest(manifests_dir: Path) -> None:
    not_built = set()
    for release in RELEASES.values():
        if not release.buildable:
            not_built.add(release.name)
            with pytest.raises(UsageError, match="cannot build yet"):
                verify_checkpoint(release.name, {})
            continue
        manifest = _manifest(manifests_dir, release.file)
        assert verify_checkpoint(release.name, manifest["keys"]) == [], release.name
    assert not_built == NOT_YET_BUILT


def test_known_extras_are_not_problems_and_real_problems_are_named(
    manifests_dir: Path,
) -> None:
    keys = _manifest(manifests_dir, "mask_rcnn_internimage_t_fpn_3x_coco.pth")["keys"]
    with_ema = {**keys, **{"ema_" + k.replace(".", "_"): v for k, v in keys.items()}}
    assert verify_checkpoint("mask_rcnn_internimage_t_fpn_3x_coco", with_ema) == []
    broken = dict(keys)
    del broken["neck.fpn_convs.0.conv.weight"]
    broken["rpn_head.rpn_cls.weight"] = [4, 256, 1, 1]
    broken["neck.extra.weight"] = [2]
    assert verify_checkpoint("mask_rcnn_internimage_t_fpn_3x_coco.pth", broken) == [
        "missing: backbone.fpn.layer_blocks.0.0.weight [256, 256, 3, 3]",
        "unexpected: neck.extra.weight [2]",
        "wrong shape: rpn.head.cls_logits.weight: file [4, 256, 1, 1], model [3, 256, 1, 1]",
    ]


def test_each_variants_default_weights_are_its_architecture() -> None:
    defaults = {r.default_for: r for r in RELEASES.values() if r.default_for in VARIANTS}
    assert set(defaults) == {v for v, info in VARIANTS.items() if info.pretrained}
    assert set(PRETRAINED) == set(defaults)
    for variant, release in defaults.items():
        info = VARIANTS[variant]
        assert info.pretrained == release.name and info.top1 == release.metric("top1")
        assert info.image_size == release.test_size
        assert PRETRAINED[variant].file_name == release.file


def test_released_classifiers_have_the_architecture_of_their_variant() -> None:
    # create_model(release name) builds the variant's config: the file's own upstream
    # arguments must describe the same network.
    for name in list_pretrained(task="classification", buildable=True):
        release = RELEASES[name]
        with torch.device("meta"):
            built = build_upstream_backbone(release.backbone_arguments())
        assert built.config.replace(drop_path_rate=0.0) == VARIANTS[
            release.variant].config.replace(drop_path_rate=0.0), name


def test_a_released_classifier_loads_from_either_hub_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for repo in ("OpenGVLab/InternImage", "OpenGVLab/DCNv4"):
        tiny = tiny_release(f"tiny_classifier_{repo.split('/')[1].lower()}",
                            like="internimage_t_1k_224", hub_repo=repo, num_classes=7,
                            depths=list(VARIANTS["internimage_atto"].config.depths))
        add_release(monkeypatch, tiny)
        source = internimage.create_model(tiny.name)
        assert source.num_classes == 7
        cache = tmp_path / repo.replace("/", "_")
        offline_hub(monkeypatch, cache)
        with pytest.raises(WeightsUnavailableError, match=f"{tiny.file} of {repo}"):
            internimage.create_model(tiny.name, pretrained=True)
        torch.save({"model": source.state_dict()}, hub_snapshot(cache, repo=repo) / tiny.file)
        loaded = internimage.create_model(tiny.file, pretrained=True)
        assert loaded.num_classes == 7 and loaded.pretrained_cfg.hub_repo == repo
        assert all(torch.equal(v, source.state_dict()[k])
                   for k, v in loaded.state_dict().items())


def test_names_aliases_and_filters() -> None:
    names = list(RELEASES)
    assert len(set(names)) == len(names)
    for release in RELEASES.values():
        # The rule: a release is called by its file's stem on the hub.
        assert release.name == Path(release.file).stem
        assert find_release(release.file) is release
        assert release.url.endswith(f"{release.hub_repo}/resolve/main/{release.file}")
    # The hub's file name differs from the one upstream's README links; both work.
    assert find_release("flash_internimage_l_22kto1k_384.pth").file == (
        "flash_intern_image_l_22kto1k_384.pth")
    assert find_release("upernet_internimage_t_ade20k").name == (
        "upernet_internimage_t_512_160k_ade20k")
    assert list_pretrained("*ade20k*", family="internimage", method="upernet",
                           buildable=True) == [
        f"upernet_internimage_{k}_{s}_160k_ade20k"
        for k, s in (("t", 512), ("s", 512), ("b", 512), ("l", 640), ("xl", 640), ("h", 896))]
    assert len(list_pretrained(buildable=True)) + len(NOT_YET_BUILT) == 85
    assert list_pretrained(classes="lvis-v1") == ["dino_4scale_cbinternimage_h_objects365_lvis"]
    assert internimage.list_pretrained is list_pretrained
    with pytest.raises(UsageError, match="unknown task 'segmentation'; choose from"):
        list_pretrained(task="segmentation")
    with pytest.raises(UsageError, match="did you mean internimage_t_1k_224"):
        find_release("internimage_t_1k_22")
    assert training_task("internimage_t") == "classification"
    assert training_task("upernet_internimage_t_ade20k") == "segmentation"
    assert training_task("cascade_internimage_l_fpn_1x_coco") == "detection"
    assert training_task("no_such_model") is None


def test_a_released_classifier_builds_by_name_with_its_classes() -> None:
    with torch.device("meta"):
        model = internimage.create_model("internimage_l_22k_192to384.pth")
    assert model.num_classes == 21841 and model.variant == "internimage_l"
    assert model.pretrained_cfg.release == "internimage_l_22k_192to384"
    assert model.pretrained_cfg.input_size == (3, 384, 384)
    with pytest.raises(ValueError, match="unknown model 'internimage_q'"):
        internimage.create_model("internimage_q")
    with pytest.raises(ValueError, match="internimage_h classifier of a kind this library "
                                         "cannot build yet"):
        internimage.create_model("internimage_h_22ktoinat18_384")
    with torch.device("meta"):
        flash = internimage.create_model("flash_intern_image_l_22k_384")
    assert flash.num_classes == 21841 and flash.variant == "flash_internimage_l"


def _write_files(tmp_path: Path) -> tuple[dict[str, torch.Tensor], Path, Path]:
    model = internimage.create_model("internimage_t")
    state = model.state_dict()
    bad = dict(state)
    del bad["head.bias"]
    bad["levels.1.blocks.0.dcn.offset.bias"] = torch.zeros(7)
    bad["decoder.weight"] = torch.zeros(2, 2)
    # A torch zip with the upstream classification layout (EMA copy and optimizer beside).
    good = tmp_path / "good.pth"
    torch.save({"model": state, "model_ema": state, "optimizer": {"lr": 0.1}, "epoch": 299},
               good)
    # A safetensors file named like a torch file: the content decides, not the suffix.
    wrong = tmp_path / "wrong.pth"
    save_file({k: v.contiguous() for k, v in bad.items()}, str(wrong))
    return state, good, wrong


def test_verify_reads_real_files_without_their_weights(tmp_path: Path) -> None:
    state, good, wrong = _write_files(tmp_path)
    shapes = checkpoint_shapes(good)
    assert shapes == {k: tuple(v.shape) for k, v in state.items()}
    assert verify_checkpoint("internimage_t_1k_224.pth", shapes) == []
    assert verify_checkpoint("internimage_t_1k_224", checkpoint_shapes(wrong)) == [
        "missing: head.bias [1000]",
        "unexpected: decoder.weight [2, 2]",
        "wrong shape: levels.1.blocks.0.dcn.offset.bias: file [7], model [144]",
    ]
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:4096])
    with pytest.raises(CheckpointFileError, match="truncated or damaged"):
        checkpoint_shapes(truncated)
    with pytest.raises(CheckpointFileError, match="is a folder"):
        checkpoint_shapes(tmp_path)
