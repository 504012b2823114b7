"""Cascade Mask R-CNN: upstream's mmdet checkpoints on torchvision's parts, the golden case
(head outputs, proposals, the three stages and the final detections of ``simple_test``), the
key map, refused configs and the released models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("torchvision", reason="the det extra is not installed")

from safetensors.torch import load_file  # noqa: E402
from torchvision.models.convnext import LayerNorm2d  # noqa: E402
from torchvision.models.detection.image_list import ImageList  # noqa: E402

from internimage.catalog import RELEASES  # noqa: E402
from internimage.catalog.verify import verify_checkpoint  # noqa: E402
from internimage.detection import (  # noqa: E402
    CASCADE_STAGE_STDS,
    CascadeRoIHeads,
    DetectorSettings,
    FractionalAnchorGenerator,
    cascade_mask_rcnn_from_mmdet_config,
    convert_mmdet_state_dict,
    create_detection_model,
    detect_preprocessed,
    detector_from_mmdet_config,
    from_mmdet,
)
from internimage.detection.inference import (  # noqa: E402
    average_mask_probabilities,
    paste_masks,
    refine_boxes,
    rpn_proposals,
    run_box_stages,
)
from internimage.errors import ConfigError, UsageError  # noqa: E402
from internimage.models import CheckpointMismatchError  # noqa: E402
from internimage.ops import use_backend  # noqa: E402

CASE = "cascade_l_like"
CONFIG_KEYS = ("type", "backbone", "neck", "rpn_head", "roi_head", "train_cfg", "test_cfg")
STAGES = 3


def _tolerance(want: torch.Tensor) -> float:
    return 1e-4 * max(1.0, float(want.abs().max()))


def _close(got: torch.Tensor, want: torch.Tensor, name: str) -> float:
    assert got.shape == want.shape, (name, got.shape, want.shape)
    error = float((got - want).abs().max()) if want.numel() else 0.0
    assert error <= _tolerance(want), (name, error)
    return error


def _background_first(mmdet_scores: torch.Tensor) -> torch.Tensor:
    """mmdet's class columns (background last) in torchvision's order (background first)."""
    return torch.cat([mmdet_scores[:, -1:], mmdet_scores[:, :-1]], dim=1)


def _match_rows(got: torch.Tensor, want: torch.Tensor, tolerance: torch.Tensor) -> torch.Tensor:
    """Pair each row of ``got`` with its own row of ``want`` (rows whose order may differ where
    scores tie), every column within its tolerance; returns ``want``'s index for each row."""
    assert got.shape == want.shape, (got.shape, want.shape)
    distance = ((got[:, None] - want[None]).abs() / tolerance).amax(dim=2)  # [R, R]
    taken = torch.zeros(len(want), dtype=torch.bool)
    order = torch.empty(len(got), dtype=torch.int64)
    for i in range(len(got)):
        row = distance[i].masked_fill(taken, float("inf"))
        j = int(row.argmin())
        assert row[j] <= 1.0, (i, got[i], want[j])
        taken[j] = True
        order[i] = j
    return order


def _model_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in CONFIG_KEYS}


@pytest.fixture(scope="module")
def case(golden_dir: Path) -> tuple[dict[str, Any], Path, dict[str, torch.Tensor]]:
    config = json.loads((golden_dir / f"{CASE}.json").read_text())
    return config, golden_dir / f"{CASE}.pth", load_file(str(golden_dir / f"{CASE}.safetensors"))


@pytest.fixture(scope="module")
def model(case: tuple[dict[str, Any], Path, dict[str, torch.Tensor]]) -> torch.nn.Module:
    config, checkpoint, _ = case
    return from_mmdet(checkpoint, _model_config(config))


def test_the_config_builds_a_cascade_of_three_stages(model: torch.nn.Module) -> None:
    heads = model.roi_heads
    assert isinstance(heads, CascadeRoIHeads) and not model.training
    assert len(heads.box_heads) == len(heads.mask_heads) == STAGES
    for coder, stds in zip(heads.box_coders, CASCADE_STAGE_STDS, strict=True):
        assert coder.weights == pytest.approx(tuple(1 / s for s in stds))
    # ConvFCBBoxHead: 4 convolutions without bias, each with BatchNorm and ReLU, one FC.
    box_head = heads.box_heads[0]
    assert box_head[0][0].bias is None and isinstance(box_head[0][1], torch.nn.BatchNorm2d)
    assert box_head[5].out_features == 64
    assert heads.score_thresh == 0.05 and heads.nms_thresh == 0.5
    assert heads.detections_per_img == 100


def test_stage_heads_reproduce_mmdet_on_fixed_roi_features(
    model: torch.nn.Module, case: tuple[dict[str, Any], Path, dict[str, torch.Tensor]]
) -> None:
    expected = case[2]
    heads = model.roi_heads
    with torch.no_grad():
        for s in range(STAGES):
            cls_score, bbox_pred = heads.box_predictors[s](heads.box_heads[s](
                expected["roi_feats7"]))
            _close(cls_score, _background_first(expected[f"cls_score_{s}"]), f"cls_score_{s}")
            assert bbox_pred[:, :4].eq(0).all()
            _close(bbox_pred[:, 4:], expected[f"bbox_pred_{s}"], f"bbox_pred_{s}")
            logits = heads.mask_predictors[s](heads.mask_heads[s](expected["roi_feats14"]))
            assert logits[:, 0].eq(0).all()
            _close(logits[:, 1:], expected[f"mask_logits_{s}"], f"mask_logits_{s}")


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_simple_test_reproduces_upstream_detections(
    model: torch.nn.Module,
    case: tuple[dict[str, Any], Path, dict[str, torch.Tensor]],
    backend: str,
) -> None:
    config, _, expected = case
    metas = config["img_metas"]
    images = expected["input"]
    shapes = [tuple(m["img_shape"][:2]) for m in metas]
    with use_backend(backend), torch.no_grad():
        features = model.backbone(images)
        proposals, scores = rpn_proposals(model, images, features, shapes)
        stages = run_box_stages(model.roi_heads.box_roi_pool, model.roi_heads.box_stages(),
                                features, proposals, shapes)
        results = detect_preprocessed(model, images, metas)
    for i, level in enumerate(features.values()):
        _close(level, expected[f"fpn{i}"], f"fpn{i}")

    # Proposals: image 0 has two of exactly equal score, which may come in either order.
    orders = []
    for i in range(len(metas)):
        want = expected[f"proposals_{i}"]
        got = torch.cat([proposals[i], scores[i][:, None]], dim=1)
        tolerance = torch.tensor([_tolerance(want[:, :4])] * 4 + [1e-4])
        orders.append(_match_rows(got, want, tolerance))
    # The stages' rows follow the proposals' order.
    order = torch.cat([orders[0], orders[1] + len(orders[0])])
    heads = model.roi_heads
    for s, (stage, (head, predictor, coder)) in enumerate(zip(stages, heads.box_stages(),
                                                              strict=True)):
        rois = expected[f"rcnn_rois_{s}"][order]
        assert torch.equal(rois[:, 0], torch.cat([torch.full((len(b),), float(i))
                                                  for i, b in enumerate(stage.boxes)]))
        _close(torch.cat(stage.boxes), rois[:, 1:], f"rcnn_rois_{s}")
        # Each stage refines the last one's boxes, which amplifies the float32 rounding of the
        # backbone (upstream's own: a float64 run differs from it as much); the stage's head is
        # therefore checked on the very boxes upstream's stage saw.
        upstream_boxes = list(rois[:, 1:].split([len(b) for b in stage.boxes]))
        with use_backend(backend), torch.no_grad():
            pooled = heads.box_roi_pool(features, upstream_boxes, shapes)
            logits, deltas = predictor(head(pooled))
        want_logits = _background_first(expected[f"rcnn_cls_score_{s}"][order])
        want_deltas = expected[f"rcnn_bbox_pred_{s}"][order]
        _close(logits, want_logits, f"rcnn_cls_score_{s}")
        _close(deltas[:, 4:], want_deltas, f"rcnn_bbox_pred_{s}")
        if s == 0:  # the chained run itself, on the proposals
            _close(stage.class_logits, want_logits, "rcnn_cls_score_0")
            _close(stage.box_regression[:, 4:], want_deltas, "rcnn_bbox_pred_0")
        if s + 1 < STAGES:
            # Upstream's refinement of upstream's boxes gives upstream's next boxes.
            refined = refine_boxes(
                coder, upstream_boxes, want_logits,
                torch.cat([torch.zeros(len(want_deltas), 4), want_deltas], dim=1), shapes)
            _close(torch.cat(refined), expected[f"rcnn_rois_{s + 1}"][order][:, 1:],
                   f"refined rcnn_rois_{s + 1}")

    heads = model.roi_heads
    for i, (result, meta) in enumerate(zip(results, metas, strict=True)):
        boxes, det_scores = expected[f"det_boxes_{i}"], expected[f"det_scores_{i}"]
        labels, masks = expected[f"det_labels_{i}"], expected[f"det_masks_{i}"]
        assert set(result) == {"boxes", "scores", "labels", "masks"}
        # Rows in score order; the closest scores differ by 4.4e-6, so match them as sets.
        got = torch.cat([result["boxes"], result["scores"][:, None]], dim=1)
        want = torch.cat([boxes, det_scores[:, None]], dim=1)
        tolerance = torch.tensor([_tolerance(boxes)] * 4 + [_tolerance(det_scores)])
        match = _match_rows(got, want, tolerance)
        _close(result["boxes"], boxes[match], f"det_boxes_{i}")
        _close(result["scores"], det_scores[match], f"det_scores_{i}")
        assert torch.equal(result["labels"] - 1, labels[match])  # 1-based here, 0-based there
        height, width = meta["ori_shape"][:2]
        assert result["masks"].shape == (len(boxes), height, width)
        # The masks pasted from this run's boxes: a handful of pixels on the 0.5 boundary may
        # flip, as upstream's do under 1e-6 of noise on the backbone features.
        differ = result["masks"] != masks[match].bool()
        assert masks.sum() > 10000 and int(differ.sum()) <= 20, int(differ.sum())
        # On upstream's boxes, pixels may differ only where the averaged probability is within
        # the tolerance of 0.5.
        factor = torch.tensor(meta["scale_factor"])
        input_boxes = boxes * factor
        # The features hold both images: the other one is given no boxes.
        per_image = [input_boxes if k == i else input_boxes[:0] for k in range(len(metas))]
        with use_backend(backend), torch.no_grad():
            probabilities = average_mask_probabilities(
                heads.mask_roi_pool, heads.mask_stages(), features, per_image,
                [labels + 1 if k == i else labels[:0] for k in range(len(metas))], shapes)[i]
        pasted = paste_masks(probabilities, input_boxes / factor, height, width, None)
        assert torch.equal(paste_masks(probabilities, input_boxes / factor, height, width),
                           pasted >= 0.5)
        differ = (pasted >= 0.5) != masks.bool()
        assert ((pasted[differ] - 0.5).abs() <= 1e-4).all(), pasted[differ]


def test_detect_preprocessed_runs_mask_rcnn_too(golden_dir: Path) -> None:
    config = json.loads((golden_dir / "maskrcnn_t_like.json").read_text())
    model = from_mmdet(golden_dir / "maskrcnn_t_like.pth",
                       {k: config[k] for k in ("backbone", "neck", "rpn_head", "bbox_head",
                                               "mask_head")})
    images = load_file(str(golden_dir / "maskrcnn_t_like.safetensors"))["input"][:1]
    height, width = images.shape[-2:]
    meta = {"img_shape": (height - 5, width - 7), "ori_shape": (2 * height, 2 * width),
            "scale_factor": 0.5}
    with torch.no_grad():
        (result,) = detect_preprocessed(model, images, [meta])
    count = len(result["boxes"])
    assert count > 0 and result["masks"].shape == (count, 2 * height, 2 * width)
    assert (result["boxes"][:, 2] <= 2 * (width - 7)).all()
    assert (result["boxes"][:, 3] <= 2 * (height - 5)).all()
    assert ((result["labels"] >= 1) & (result["labels"] <= 5)).all()
    assert (result["scores"][:-1] >= result["scores"][1:]).all()
    model.train()
    with pytest.raises(UsageError, match="eval mode"):
        detect_preprocessed(model, images, [meta])


def test_torchvision_inference_runs_and_training_is_refused(
    case: tuple[dict[str, Any], Path, dict[str, torch.Tensor]],
) -> None:
    config, checkpoint, expected = case
    model = from_mmdet(checkpoint, _model_config(config),
                       settings=DetectorSettings(min_size=96, max_size=128))
    image = expected["input"][1].sub(expected["input"].min()).div(8).clamp(0, 1)  # [3, H, W]
    with torch.no_grad():
        (result,) = model([image])
    count = result["boxes"].shape[0]
    assert count > 0 and result["masks"].shape == (count, 1, *image.shape[1:])
    model.train()
    with pytest.raises(UsageError, match="training Cascade Mask R-CNN is not available yet"):
        model([image], [{"boxes": torch.tensor([[1.0, 2.0, 30.0, 40.0]]),
                         "labels": torch.tensor([1]),
                         "masks": torch.zeros(1, *image.shape[1:], dtype=torch.uint8)}])


def test_the_key_map_covers_every_stage() -> None:
    state = {
        "roi_head.bbox_head.2.shared_convs.3.conv.weight": torch.zeros(1),
        "roi_head.bbox_head.2.shared_convs.3.bn.running_var": torch.zeros(1),
        "roi_head.bbox_head.2.shared_fcs.0.weight": torch.zeros(1),
        "roi_head.bbox_head.1.fc_cls.weight": torch.arange(6.0)[:, None],  # 5 classes + bg
        "roi_head.bbox_head.1.fc_reg.bias": torch.ones(20),
        "roi_head.mask_head.0.convs.1.conv.bias": torch.zeros(1),
        "roi_head.mask_head.0.upsample.weight": torch.zeros(1),
        "roi_head.mask_head.2.conv_logits.weight": torch.ones(5, 3, 1, 1),
    }
    out = convert_mmdet_state_dict(state)
    # Four convolutions, then torchvision's Flatten: the FC is module 5.
    assert set(out) == {
        "roi_heads.box_heads.2.3.0.weight", "roi_heads.box_heads.2.3.1.running_var",
        "roi_heads.box_heads.2.5.weight", "roi_heads.box_predictors.1.cls_score.weight",
        "roi_heads.box_predictors.1.bbox_pred.bias", "roi_heads.mask_heads.0.1.0.bias",
        "roi_heads.mask_predictors.0.conv5_mask.weight",
        "roi_heads.mask_predictors.2.mask_fcn_logits.weight",
    }
    assert out["roi_heads.box_predictors.1.cls_score.weight"][:, 0].tolist() == [5, 0, 1, 2, 3, 4]
    reg = out["roi_heads.box_predictors.1.bbox_pred.bias"]
    assert reg.shape == (24,) and reg[:4].eq(0).all() and reg[4:].eq(1).all()
    logits = out["roi_heads.mask_predictors.2.mask_fcn_logits.weight"]
    assert logits.shape == (6, 3, 1, 1) and logits[0].eq(0).all() and logits[1:].eq(1).all()


def test_a_cascade_checkpoint_that_does_not_fit_lists_the_keys(
    case: tuple[dict[str, Any], Path, dict[str, torch.Tensor]], model: torch.nn.Module
) -> None:
    config, checkpoint, _ = case
    state = dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    # mmdet's EMA hook adds a raw copy of every entry: ignored.
    with_ema = {**state, **{"ema_" + k.replace(".", "_"): v.clone() for k, v in state.items()}}
    loaded = from_mmdet({"state_dict": with_ema}, _model_config(config))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    del state["roi_head.bbox_head.1.shared_convs.2.bn.running_mean"]
    state["roi_head.mask_head.3.upsample.weight"] = torch.zeros(1)
    state["roi_head.bbox_head.2.fc_cls.bias"] = torch.zeros(4)
    with pytest.raises(CheckpointMismatchError) as info:
        from_mmdet({"state_dict": state}, _model_config(config))
    message = str(info.value)
    assert "roi_heads.box_heads.1.2.1.running_mean" in message
    assert "roi_heads.mask_predictors.3.conv5_mask.weight" in message
    assert "roi_heads.box_predictors.2.cls_score.bias checkpoint [4] vs model [6]" in message


def _cascade_config(case_config: dict[str, Any], **roi_changes: Any) -> dict[str, Any]:
    config = json.loads(json.dumps(_model_config(case_config)))
    config["roi_head"].update(roi_changes)
    return config


def test_one_head_dict_is_replicated_for_every_stage(
    case: tuple[dict[str, Any], Path, dict[str, torch.Tensor]],
) -> None:
    config = case[0]
    one_box = dict(config["roi_head"]["bbox_head"][0])
    model, classes = cascade_mask_rcnn_from_mmdet_config(
        _cascade_config(config, bbox_head=one_box, num_stages=2))
    assert classes == 5 and len(model.roi_heads.box_heads) == len(model.roi_heads.mask_heads) == 2
    # mmdet's default: every stage has the first stage's stds.
    assert model.roi_heads.box_coders[1].weights == pytest.approx((10.0, 10.0, 5.0, 5.0))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"type": "HybridTaskCascadeRoIHead"}, "roi_head.type"),
        ({"num_stages": 2}, "list of 2"),
        ({"bbox_head": [{"num_classes": 5, "norm_cfg": None}] * 3}, "norm_cfg"),
        ({"bbox_head": [{"num_classes": 5, "num_shared_fcs": 2}] * 3}, "num_shared_fcs"),
        ({"bbox_head": [{"num_classes": 5, "in_channels": 32, "conv_out_channels": 32,
                         "norm_cfg": {"type": "BN"}, "fc_out_channels": 64 * (i + 1)}
                        for i in range(3)]}, "fc_channels"),
        ({"mask_head": {"num_classes": 4, "in_channels": 32}}, "num_classes"),
        ({"colour": 1}, "'colour'"),
    ],
)
def test_cascade_configs_the_model_cannot_express_are_refused(
    case: tuple[dict[str, Any], Path, dict[str, torch.Tensor]], change: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        detector_from_mmdet_config(_cascade_config(case[0], **change))


def test_the_model_type_picks_the_detector(
    case: tuple[dict[str, Any], Path, dict[str, torch.Tensor]],
) -> None:
    config = _model_config(case[0])
    with pytest.raises(ConfigError, match="'HybridTaskCascade' is not supported"):
        detector_from_mmdet_config({**config, "type": "HybridTaskCascade"})
    with pytest.raises(ConfigError, match="bbox_head"):
        # A Mask R-CNN config does not take a list of box heads.
        detector_from_mmdet_config({**config, "type": "MaskRCNN"})


def test_anchors_sit_at_the_true_strides_of_any_padded_size() -> None:
    sizes, ratios = ((32.0,), (512.0,)), ((1.0,), (1.0,))
    maps = [torch.zeros(1, 1, 32, 40), torch.zeros(1, 1, 2, 3)]  # a 128 x 160 batch: P2, P6
    images = ImageList(torch.zeros(1, 3, 128, 160), [(128, 160)])
    (fixed,) = FractionalAnchorGenerator(sizes, ratios, strides=(4, 64))(images, maps)
    (inferred,) = FractionalAnchorGenerator(sizes, ratios)(images, maps)
    centres = (fixed[-6:, :2] + fixed[-6:, 2:]) / 2  # P6's 2 x 3 anchors
    assert centres.tolist() == [[x, y] for y in (0.0, 64.0) for x in (0.0, 64.0, 128.0)]
    # torchvision's inferred stride would be 160 // 3 = 53 across.
    assert ((inferred[-6:, 0] + inferred[-6:, 2]) / 2).tolist()[:3] == [0.0, 53.0, 106.0]
    torch.testing.assert_close(fixed[:-6], inferred[:-6])


CASCADES = sorted(n for n, r in RELEASES.items() if r.method == "cascade_mask_rcnn")
# The paper's Table 3: Cascade Mask R-CNN with InternImage-L 277M, with InternImage-XL 387M.
PUBLISHED_MILLIONS = {"internimage_l": 277, "internimage_xl": 387, "flash_internimage_l": 277}


@pytest.mark.parametrize("name", CASCADES)
def test_released_cascades_build_and_verify(name: str, manifests_dir: Path) -> None:
    release = RELEASES[name]
    manifest = json.loads((manifests_dir / f"{Path(release.file).stem}.keys.json").read_text())
    # The 3x files also carry the EMA hook's ema_* copies: known extras.
    shapes = {**manifest["keys"], **manifest.get("extra_keys", {})}
    assert verify_checkpoint(name, shapes) == []
    with torch.device("meta"):
        model = create_detection_model(name)
    assert isinstance(model.roi_heads, CascadeRoIHeads)
    assert model.roi_heads.box_predictors[2].cls_score.out_features == 81
    # FlashInternImage's detectors use FPN_vitdet: LayerNorms after bias-free convolutions.
    flash = release.family == "flash_internimage"
    assert isinstance(model.backbone.fpn.inner_blocks[0][-1], LayerNorm2d) == flash
    count = sum(p.numel() for p in model.parameters())
    # torchvision's predictors add the background's 4 regression rows and mask channel.
    background = STAGES * (4 * 1025 + 257)
    assert count == manifest["n_params"] + background
    assert count / 1e6 == pytest.approx(PUBLISHED_MILLIONS[release.variant], rel=0.01)
    assert len(CASCADES) == 6


def test_a_flash_internimage_cascade_with_fpn_vitdet_detects(
    case: tuple[dict[str, Any], Path, dict[str, torch.Tensor]],
) -> None:
    config = _model_config(case[0])
    config["backbone"] = {"type": "FlashInternImage", "channels": 16, "depths": [1, 1, 1, 1],
                          "groups": [1, 2, 4, 8], "offset_scale": 1.0, "layer_scale": 1.0}
    config["neck"] = {**config["neck"], "type": "FPN_vitdet", "norm_cfg": {"type": "LN"},
                      "use_residual": True}
    torch.manual_seed(0)
    model, classes = detector_from_mmdet_config(config)
    model.eval()
    assert isinstance(model.roi_heads, CascadeRoIHeads) and classes == 5
    assert isinstance(model.backbone.fpn.layer_blocks[0][1], LayerNorm2d)
    images = torch.randn(1, 3, 64, 96)
    meta = {"img_shape": (60, 90, 3), "ori_shape": (120, 180, 3), "scale_factor": 0.5}
    with torch.no_grad():
        (result,) = detect_preprocessed(model, images, [meta])
    count = len(result["boxes"])
    assert 0 < count <= 100 and result["masks"].shape == (count, 120, 180)
    assert (result["boxes"][:, 2] <= 180).all() and (result["boxes"][:, 3] <= 120).all()
    assert ((result["labels"] >= 1) & (result["labels"] <= classes)).all()
    assert (result["scores"] > 0.05).all()
    # Nothing above the threshold, then no proposal at all: empty results of the same form.
    model.roi_heads.score_thresh = 1.0
    with torch.no_grad():
        (empty,) = detect_preprocessed(model, images, [meta])
    model.rpn._post_nms_top_n["testing"] = 0
    with torch.no_grad():
        (none,) = detect_preprocessed(model, images, [meta])
    for result in (empty, none):
        assert result["boxes"].shape == (0, 4) and result["scores"].shape == (0,)
        assert result["labels"].shape == (0,) and result["masks"].shape == (0, 120, 180)
