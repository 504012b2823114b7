"""Upstream's FPN_vitdet neck (FlashInternImage's Mask R-CNN) on torchvision's FPN: its
computation written out independently, its keys, and the released models' sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("torchvision", reason="the det extra is not installed")

from internimage.catalog import RELEASES, list_pretrained  # noqa: E402
from internimage.detection import (  # noqa: E402
    convert_mmdet_state_dict,
    create_detection_model,
    mask_rcnn_from_mmdet_config,
)
from internimage.errors import ConfigError  # noqa: E402

BACKBONE = {"type": "FlashInternImage", "channels": 16, "depths": [1, 1, 1, 1],
            "groups": [1, 2, 4, 8], "offset_scale": 1.0, "layer_scale": 1.0}


def _config(neck: dict) -> dict:
    return {
        "backbone": BACKBONE,
        "neck": {"in_channels": [16, 32, 64, 128], "out_channels": 32, "num_outs": 5, **neck},
        "rpn_head": {"in_channels": 32, "feat_channels": 32},
        "roi_head": {
            "bbox_head": {"in_channels": 32, "fc_out_channels": 64, "num_classes": 3},
            "mask_head": {"num_convs": 1, "in_channels": 32, "conv_out_channels": 32,
                          "num_classes": 3},
        },
    }


def _conv_ln(x: torch.Tensor, conv: torch.Tensor, ln_w: torch.Tensor, ln_b: torch.Tensor,
             padding: int) -> torch.Tensor:
    y = F.conv2d(x, conv, padding=padding)
    y = F.layer_norm(y.permute(0, 2, 3, 1), (y.shape[1],), ln_w, ln_b, eps=1e-5)
    return y.permute(0, 3, 1, 2)


def test_fpn_vitdet_computes_upstreams_neck_from_mmdet_keys() -> None:
    model, _ = mask_rcnn_from_mmdet_config(_config({"type": "FPN_vitdet",
                                                    "norm_cfg": {"type": "LN"},
                                                    "use_residual": True}))
    model.eval()
    # An mmdet-format neck with random values, loaded through the key conversion.
    neck = {}
    for i, width in enumerate((16, 32, 64, 128)):
        neck[f"neck.lateral_convs.{i}.conv.weight"] = torch.randn(32, width, 1, 1) * 0.1
        neck[f"neck.fpn_convs.{i}.conv.weight"] = torch.randn(32, 32, 3, 3) * 0.05
        for kind in ("lateral_convs", "fpn_convs"):
            neck[f"neck.{kind}.{i}.ln.weight"] = 1 + torch.randn(32) * 0.1
            neck[f"neck.{kind}.{i}.ln.bias"] = torch.randn(32) * 0.1
    converted = convert_mmdet_state_dict(neck)
    assert set(converted) <= set(model.state_dict())
    assert not any(k.startswith("backbone.fpn") and k.endswith(".0.bias")
                   for k in model.state_dict())  # the convolutions have no bias
    model.load_state_dict(converted, strict=False)

    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        maps = model.backbone.body(x)
        got = list(model.backbone(x).values())
        laterals = [_conv_ln(m, neck[f"neck.lateral_convs.{i}.conv.weight"],
                             neck[f"neck.lateral_convs.{i}.ln.weight"],
                             neck[f"neck.lateral_convs.{i}.ln.bias"], 0)
                    for i, m in enumerate(maps)]
        for i in (3, 2, 1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        outs = [_conv_ln(lat, neck[f"neck.fpn_convs.{i}.conv.weight"],
                         neck[f"neck.fpn_convs.{i}.ln.weight"], neck[f"neck.fpn_convs.{i}.ln.bias"],
                         1)
                for i, lat in enumerate(laterals)]
        outs.append(F.max_pool2d(outs[-1], 1, stride=2))
    assert len(got) == 5
    for a, b in zip(got, outs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_neck_settings_that_do_not_fit_are_refused() -> None:
    with pytest.raises(ConfigError, match="neck.type='PAFPN'"):
        mask_rcnn_from_mmdet_config(_config({"type": "PAFPN"}))
    with pytest.raises(ConfigError, match="use_residual"):
        mask_rcnn_from_mmdet_config(_config({"type": "FPN_vitdet", "use_residual": False}))
    with pytest.raises(ConfigError, match="use_residual is an FPN_vitdet setting"):
        mask_rcnn_from_mmdet_config(_config({"type": "FPN", "use_residual": True}))


def test_released_flash_mask_rcnn_models_have_the_published_sizes() -> None:
    # Upstream's README: Mask R-CNN with FlashInternImage-T/S/B 49M, 69M, 115M parameters.
    names = list_pretrained(family="flash_internimage", method="mask_rcnn")
    assert len(names) == 6 and all(RELEASES[n].buildable for n in names)
    for name, millions in zip(names[::2], (49, 69, 115), strict=True):
        with torch.device("meta"):
            model = create_detection_model(name)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        assert params == pytest.approx(millions, rel=0.02), name
        assert model.backbone.fpn.inner_blocks[0][1].eps == 1e-5
