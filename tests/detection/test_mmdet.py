"""Upstream's mmdet Mask R-CNN checkpoints as torchvision models: the golden case, strict key
conversion, refused configs, and the mmdet semantics of the RoI pooling, anchors and box coder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchvision", reason="the det extra is not installed")

from safetensors.torch import load_file  # noqa: E402
from torchvision.ops import roi_align  # noqa: E402

from internimage.detection import (  # noqa: E402
    AlignedMultiScaleRoIAlign,
    FractionalAnchorGenerator,
    SymmetricClampBoxCoder,
    convert_mmdet_state_dict,
    from_mmdet,
    mask_rcnn_from_mmdet_config,
)
from internimage.errors import ConfigError  # noqa: E402
from internimage.models import CheckpointMismatchError  # noqa: E402
from internimage.ops import use_backend  # noqa: E402

PARTS = ("backbone", "neck", "rpn_head", "bbox_head", "mask_head")


def _golden(golden_dir: Path) -> tuple[dict, Path, dict[str, torch.Tensor]]:
    config = json.loads((golden_dir / "maskrcnn_t_like.json").read_text())
    return ({k: config[k] for k in PARTS}, golden_dir / "maskrcnn_t_like.pth",
            load_file(str(golden_dir / "maskrcnn_t_like.safetensors")))


def _close(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    assert got.shape == want.shape, (name, got.shape, want.shape)
    scale = max(1.0, float(want.abs().max()))
    error = float((got - want).abs().max())
    assert error <= 1e-4 * scale, (name, error)


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_upstream_mmdet_checkpoint_reproduces_mmdet(golden_dir: Path, backend: str) -> None:
    model_cfg, checkpoint, expected = _golden(golden_dir)
    model = from_mmdet(checkpoint, model_cfg)
    assert not model.training
    x = expected["input"]
    with use_backend(backend), torch.no_grad():
        stages = model.backbone.body(x)
        pyramid = model.backbone(x)
        scores, deltas = model.rpn.head(list(pyramid.values()))
        box_features = model.roi_heads.box_head(expected["roi_feats7"])
        cls_score, bbox_pred = model.roi_heads.box_predictor(box_features)
        mask_logits = model.roi_heads.mask_predictor(
            model.roi_heads.mask_head(expected["roi_feats14"]))
    for i, stage in enumerate(stages):
        _close(stage, expected[f"stage{i}"], f"stage{i}")
    assert list(pyramid) == ["0", "1", "2", "3", "pool"]
    for i, level in enumerate(pyramid.values()):
        _close(level, expected[f"fpn{i}"], f"fpn{i}")
        _close(scores[i], expected[f"rpn_cls{i}"], f"rpn_cls{i}")
        _close(deltas[i], expected[f"rpn_reg{i}"], f"rpn_reg{i}")
    # torchvision puts the background first, mmdet last.
    want_cls = expected["cls_score"]
    _close(cls_score, torch.cat([want_cls[:, -1:], want_cls[:, :-1]], dim=1), "cls_score")
    assert torch.equal(bbox_pred[:, :4], torch.zeros_like(bbox_pred[:, :4]))
    _close(bbox_pred[:, 4:], expected["bbox_pred"], "bbox_pred")
    _close(mask_logits[:, 1:], expected["mask_logits"], "mask_logits")


def test_the_converted_detector_runs_end_to_end(golden_dir: Path) -> None:
    model_cfg, checkpoint, expected = _golden(golden_dir)
    model = from_mmdet(checkpoint, model_cfg)
    image = expected["input"][0].sub(expected["input"].min()).div(8).clamp(0, 1)  # [3, H, W]
    with torch.no_grad():
        (result,) = model([image])
    assert set(result) == {"boxes", "labels", "scores", "masks"}
    count = result["boxes"].shape[0]
    assert result["masks"].shape == (count, 1, *image.shape[1:])
    assert ((result["labels"] >= 1) & (result["labels"] <= 5)).all()


def test_a_checkpoint_that_does_not_fit_lists_the_keys(golden_dir: Path) -> None:
    model_cfg, checkpoint, _ = _golden(golden_dir)
    state = dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    del state["neck.fpn_convs.2.conv.bias"]
    state["roi_head.bbox_head.extra.weight"] = torch.zeros(1)
    state["rpn_head.rpn_cls.bias"] = torch.zeros(5)
    state["ema_backbone_patch_embed_conv1_weight"] = torch.zeros(1)  # dropped, as upstream's
    with pytest.raises(CheckpointMismatchError) as info:
        from_mmdet({"state_dict": state}, model_cfg)
    message = str(info.value)
    assert "backbone.fpn.layer_blocks.2.0.bias" in message
    assert "roi_head.bbox_head.extra.weight" in message
    assert "rpn.head.cls_logits.bias checkpoint [5] vs model [3]" in message
    assert "ema_" not in message


def test_the_key_map_moves_the_background_class() -> None:
    fc_cls = torch.arange(6 * 2, dtype=torch.float32).view(6, 2)  # 5 classes + background
    fc_reg = torch.ones(20, 2)
    logits = torch.ones(5, 3, 1, 1)
    out = convert_mmdet_state_dict({
        "roi_head.bbox_head.fc_cls.weight": fc_cls,
        "roi_head.bbox_head.fc_reg.weight": fc_reg,
        "roi_head.mask_head.conv_logits.weight": logits,
        "neck.lateral_convs.3.conv.weight": torch.zeros(1),
        "roi_head.mask_head.convs.2.conv.bias": torch.zeros(1),
    })
    assert torch.equal(out["roi_heads.box_predictor.cls_score.weight"][0], fc_cls[5])
    assert torch.equal(out["roi_heads.box_predictor.cls_score.weight"][1:], fc_cls[:5])
    reg = out["roi_heads.box_predictor.bbox_pred.weight"]
    assert reg.shape == (24, 2) and reg[:4].eq(0).all() and reg[4:].eq(1).all()
    mask = out["roi_heads.mask_predictor.mask_fcn_logits.weight"]
    assert mask.shape == (6, 3, 1, 1) and mask[0].eq(0).all()
    assert "backbone.fpn.inner_blocks.3.0.weight" in out
    assert "roi_heads.mask_head.2.0.bias" in out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"neck": {"out_channels": 32, "num_outs": 4}}, "num_outs"),
        ({"neck": {"out_channels": 32, "add_extra_convs": "on_input"}}, "add_extra_convs"),
        ({"neck": {"out_channels": 32, "colour": 1}}, "'colour'"),
        ({"bbox_head": {"num_classes": 5, "reg_class_agnostic": True}}, "reg_class_agnostic"),
        ({"bbox_head": {"num_classes": 5, "bbox_coder": {"target_stds": [1, 1, 1, 1]}}},
         "target_stds"),
        ({"rpn_head": {"anchor_generator": {"scales": [4, 8]}}}, "one scale"),
        ({"roi_head": {"bbox_roi_extractor": {"roi_layer": {"type": "RoIAlign", "output_size": 7,
                                                            "sampling_ratio": 2}}}},
         "sampling_ratio"),
        ({"backbone": {"channels": 16, "colour": 1}}, "'colour'"),
        ({"mask_head": {"num_classes": 3}}, "num_classes"),
        ({"extra": {}}, "'extra'"),
    ],
)
def test_configs_the_torchvision_model_cannot_express_are_refused(
    golden_dir: Path, change: dict, message: str
) -> None:
    model_cfg, _, _ = _golden(golden_dir)
    model_cfg.update(change)
    with pytest.raises(ConfigError, match=message):
        mask_rcnn_from_mmdet_config(model_cfg)


def test_roi_pooling_follows_mmdet_levels_and_alignment() -> None:
    torch.manual_seed(0)
    features = {str(i): torch.randn(2, 3, 64 // 2**i, 64 // 2**i) for i in range(4)}
    pool = AlignedMultiScaleRoIAlign(["0", "1", "2", "3"], [4, 8, 16, 32], 7)
    # Box sides 20 -> level 0; 112 -> level 1 (sqrt(area) / 56 = 2); 200 -> 1.8 -> 0 + log ...
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 20.0], [10.0, 10.0, 122.0, 122.0]]),
             torch.tensor([[3.0, 5.0, 227.0, 229.0], [1.5, 2.5, 40.0, 30.0]])]
    levels = pool.levels(torch.cat(boxes)).tolist()
    expected_levels = [min(3, max(0, math.floor(math.log2(math.sqrt(
        float((b[2] - b[0]) * (b[3] - b[1]))) / 56 + 1e-6)))) for b in torch.cat(boxes)]
    assert levels == expected_levels == [0, 1, 2, 0]
    out = pool(features, boxes, [(256, 256), (256, 256)])
    assert out.shape == (4, 3, 7, 7)
    for k, (image, box) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        level = levels[k]
        roi = torch.cat([torch.tensor([float(image)]), boxes[image][box]])[None]
        want = roi_align(features[str(level)], roi, 7, spatial_scale=1 / 4 / 2**level,
                         sampling_ratio=0, aligned=True)
        torch.testing.assert_close(out[k : k + 1], want)


def test_anchors_stay_fractional_like_mmdet() -> None:
    generator = FractionalAnchorGenerator(sizes=((32.0,),), aspect_ratios=((0.5, 1.0, 2.0),))
    (cell,) = generator.cell_anchors
    # mmdet's base anchors for base size 4, scale 8: w = 32 / sqrt(r), h = 32 * sqrt(r).
    for row, ratio in zip(cell, (0.5, 1.0, 2.0), strict=True):
        w, h = 32 / math.sqrt(ratio), 32 * math.sqrt(ratio)
        torch.testing.assert_close(row, torch.tensor([-w / 2, -h / 2, w / 2, h / 2]))
    assert not torch.equal(cell, cell.round())


def test_box_deltas_are_clamped_on_both_sides() -> None:
    clip = math.log(1000 / 16)
    coder = SymmetricClampBoxCoder((1.0, 1.0, 1.0, 1.0), clip)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    deltas = torch.tensor([[0.1, -0.2, -9.0, 9.0]])
    (decoded,) = coder.decode_single(deltas, boxes)
    w, h = 10 * math.exp(-clip), 20 * math.exp(clip)
    cx, cy = 5 + 0.1 * 10, 10 - 0.2 * 20
    torch.testing.assert_close(decoded, torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2,
                                                      cy + h / 2]))
