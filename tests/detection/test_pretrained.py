"""The released COCO Mask R-CNN presets: architectures, COCO's classes and ids, and weights from
the Hugging Face cache without network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from catalog_rows import add_release, tiny_release
from hub_cache import hub_snapshot, offline_hub

pytest.importorskip("torchvision", reason="the det extra is not installed")

from internimage.catalog import RELEASES, list_pretrained  # noqa: E402
from internimage.detection import (  # noqa: E402
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    create_detection_model,
)
from internimage.errors import UsageError, WeightsUnavailableError  # noqa: E402

# The paper's Table 3 (Mask R-CNN with InternImage-T/S/B): 49M, 69M and 115M parameters.
PUBLISHED_MILLIONS = {"t": 49, "s": 69, "b": 115}


MASK_RCNN = list_pretrained(family="internimage", method="mask_rcnn")


def test_every_released_internimage_mask_rcnn_is_built() -> None:
    assert [RELEASES[n].name for n in MASK_RCNN] == [
        f"mask_rcnn_internimage_{k}_fpn_{x}_coco" for k in "tsb" for x in ("1x", "3x")]
    assert all(RELEASES[n].buildable for n in MASK_RCNN)


@pytest.mark.parametrize("name", MASK_RCNN)
def test_presets_have_the_published_size(name: str) -> None:
    release = RELEASES[name]
    with torch.device("meta"):
        model = create_detection_model(name)
        # The name used before the catalogue builds the same model.
        letter, schedule = release.variant.rsplit("_", 1)[1], name.split("_")[-2]
        old = create_detection_model(f"mask_rcnn_internimage_{letter}_{schedule}_coco")
    assert [(k, v.shape) for k, v in old.state_dict().items()] == [
        (k, v.shape) for k, v in model.state_dict().items()]
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert millions == pytest.approx(PUBLISHED_MILLIONS[letter], rel=0.02), millions
    assert model.roi_heads.box_predictor.cls_score.out_features == 81
    assert model.transform.min_size == (800,) and model.transform.max_size == 1333


def test_coco_classes_and_category_ids() -> None:
    assert len(COCO_CLASSES) == len(set(COCO_CLASSES)) == 80
    assert len(COCO_CATEGORY_IDS) == 80
    assert list(COCO_CATEGORY_IDS) == sorted(set(COCO_CATEGORY_IDS))
    assert set(range(1, 91)) - set(COCO_CATEGORY_IDS) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    named = dict(zip(COCO_CLASSES, COCO_CATEGORY_IDS, strict=True))
    assert named["person"] == 1 and named["backpack"] == 27 and named["toothbrush"] == 90
    assert named["dining table"] == 67 and named["tv"] == 72


def _mmdet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision Mask R-CNN keys and tensors back to mmdet's (the inverse of the conversion,
    written out independently)."""
    out = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix == "roi_heads.box_predictor.cls_score":
            out[f"roi_head.bbox_head.fc_cls.{leaf}"] = torch.cat([value[1:], value[:1]])
            continue
        if prefix == "roi_heads.box_predictor.bbox_pred":
            out[f"roi_head.bbox_head.fc_reg.{leaf}"] = value[4:]
            continue
        if prefix == "roi_heads.mask_predictor.mask_fcn_logits":
            out[f"roi_head.mask_head.conv_logits.{leaf}"] = value[1:]
            continue
        parts = prefix.split(".")
        if parts[:2] == ["backbone", "body"]:
            new = ".".join(["backbone", *parts[2:]])
        elif parts[:3] == ["backbone", "fpn", "inner_blocks"]:
            new = f"neck.lateral_convs.{parts[3]}.conv"
        elif parts[:3] == ["backbone", "fpn", "layer_blocks"]:
            new = f"neck.fpn_convs.{parts[3]}.conv"
        elif prefix == "rpn.head.conv.0.0":
            new = "rpn_head.rpn_conv"
        elif prefix == "rpn.head.cls_logits":
            new = "rpn_head.rpn_cls"
        elif prefix == "rpn.head.bbox_pred":
            new = "rpn_head.rpn_reg"
        elif prefix in ("roi_heads.box_head.fc6", "roi_heads.box_head.fc7"):
            new = f"roi_head.bbox_head.shared_fcs.{int(prefix[-1]) - 6}"
        elif parts[:2] == ["roi_heads", "mask_head"]:
            new = f"roi_head.mask_head.convs.{parts[2]}.conv"
        elif prefix == "roi_heads.mask_predictor.conv5_mask":
            new = "roi_head.mask_head.upsample"
        else:
            raise AssertionError(f"unmapped key {key}")
        out[f"{new}.{leaf}"] = value
    return out


def test_released_weights_load_from_the_hub_cache_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = tiny_release("tiny_mask_rcnn_coco", like="mask_rcnn_internimage_t_fpn_1x_coco",
                        layer_scale=1.0)
    add_release(monkeypatch, tiny)
    source = create_detection_model(tiny.name).eval()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        # The background rows that mmdet files do not hold are zero after conversion.
        source.roi_heads.box_predictor.bbox_pred.weight[:4] = 0
        source.roi_heads.box_predictor.bbox_pred.bias[:4] = 0
        source.roi_heads.mask_predictor.mask_fcn_logits.weight[:1] = 0
        source.roi_heads.mask_predictor.mask_fcn_logits.bias[:1] = 0
    cache = tmp_path / "hub"
    offline_hub(monkeypatch, cache)
    with pytest.raises(WeightsUnavailableError,
                       match=r"tiny_mask_rcnn_coco\.pth.*Hugging Face cache"):
        create_detection_model(tiny.name, pretrained=True)

    snapshot = hub_snapshot(cache)
    torch.save({"meta": {}, "state_dict": _mmdet_keys(source.state_dict())},
               snapshot / tiny.file)
    loaded = create_detection_model(tiny.name, pretrained=True)
    assert not loaded.training
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for (a_name, a), (b_name, b) in zip(loaded.backbone(x).items(),
                                            source.backbone(x).items(), strict=True):
            assert a_name == b_name and torch.equal(a, b)
    local = create_detection_model(tiny.name, pretrained=snapshot / tiny.file)
    assert torch.equal(local.rpn.head.cls_logits.weight, source.rpn.head.cls_logits.weight)


def test_bad_requests_are_named() -> None:
    with pytest.raises(UsageError, match="no released checkpoint is called 'mask_rcnn_x'"):
        create_detection_model("mask_rcnn_x")
    with pytest.raises(UsageError, match="80 classes, not 3"):
        create_detection_model("mask_rcnn_internimage_t_1x_coco", pretrained=True,
                               num_classes=3)
    with pytest.raises(UsageError, match="upernet_internimage_t_512_160k_ade20k is a semantic "
                                         "segmentation model, not a detector"):
        create_detection_model("upernet_internimage_t_512_160k_ade20k")
    with pytest.raises(UsageError, match=r"DINO model \(backbone InternImage-T\), which this "
                                         r"library cannot build yet"):
        create_detection_model("dino_4scale_internimage_t_1x_coco")
