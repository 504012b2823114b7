"""InternImage in transformers: registration, the backbone, save/load, Mask2Former, and upstream's
Hugging Face classification format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import internimage

transformers = pytest.importorskip("transformers", reason="the seg extra is not installed")

from internimage.layers.dcnv4 import DCNv4  # noqa: E402
from internimage.models.hf import (  # noqa: E402
    STAGE_NAMES,
    InternImageHFBackbone,
    InternImageHFConfig,
    InternImageHFForImageClassification,
)

TINY = {"depths": [1, 1, 1, 1]}


def test_importing_internimage_does_not_need_transformers() -> None:
    program = (
        "import sys, internimage; internimage.create_model('internimage_atto'); "
        "import internimage.train.trainer, internimage.cli.main; "
        "print('transformers' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip() == "False"


def test_auto_classes_build_internimage() -> None:
    config = transformers.AutoConfig.for_model("internimage", **TINY)
    assert isinstance(config, InternImageHFConfig)
    backbone = transformers.AutoBackbone.from_config(config)
    assert isinstance(backbone, InternImageHFBackbone)
    classifier = transformers.AutoModelForImageClassification.from_config(config)
    assert isinstance(classifier, InternImageHFForImageClassification)


def test_backbone_returns_the_stage_maps_of_this_librarys_model() -> None:
    config = InternImageHFConfig.from_variant("internimage_atto", **TINY)
    assert config.out_features == list(STAGE_NAMES) and config.out_indices == [0, 1, 2, 3]
    backbone = InternImageHFBackbone(config).eval()
    assert backbone.channels == [16, 32, 64, 128]
    reference = internimage.create_model("internimage_atto", depths=(1, 1, 1, 1),
                                         features_only=True).eval()
    reference.load_state_dict(backbone.model.state_dict())
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        maps = backbone(x).feature_maps
        expected = reference(x)
    assert [tuple(m.shape) for m in maps] == [(2, 16, 16, 24), (2, 32, 8, 12), (2, 64, 4, 6),
                                              (2, 128, 2, 3)]
    for got, want in zip(maps, expected, strict=True):
        assert torch.equal(got, want)
    two = InternImageHFBackbone(InternImageHFConfig.from_variant(
        "internimage_atto", out_features=["stage2", "stage4"], **TINY))
    assert [m.shape[1] for m in two(x).feature_maps] == [32, 128]
    with pytest.raises(ValueError, match="out_features"):
        InternImageHFConfig(out_features=["stage5"])


def test_new_models_start_as_this_librarys_models_do() -> None:
    """DCNv3 offsets start at zero and point weights uniform, also when transformers' composite
    models initialise their sub-models."""
    config = InternImageHFConfig.from_variant("internimage_atto", layer_scale=0.5, **TINY)
    upernet = transformers.UperNetForSemanticSegmentation(
        transformers.UperNetConfig(backbone_config=config, hidden_size=16, auxiliary_channels=8,
                                   num_labels=3)
    )
    block = upernet.backbone.model.levels[0].blocks[0]
    assert torch.count_nonzero(block.dcn.offset.weight) == 0
    assert torch.count_nonzero(block.dcn.mask.weight) == 0
    assert torch.all(block.gamma1 == 0.5)
    assert float(block.mlp.fc1.weight.detach().std()) == pytest.approx(0.02, rel=0.3)


def test_upernet_and_classifier_round_trip_through_save_pretrained(tmp_path: Path) -> None:
    backbone = InternImageHFConfig.from_variant("internimage_atto", **TINY)
    upernet = transformers.UperNetForSemanticSegmentation(
        transformers.UperNetConfig(backbone_config=backbone, hidden_size=16,
                                   auxiliary_channels=8, num_labels=4)
    ).eval()
    upernet.save_pretrained(tmp_path / "upernet")
    assert (tmp_path / "upernet" / "model.safetensors").is_file()
    again = transformers.AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "upernet")
    assert isinstance(again.backbone, InternImageHFBackbone)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(upernet(x).logits, again.eval()(x).logits)

    classifier = InternImageHFForImageClassification(
        InternImageHFConfig.from_variant("internimage_atto", num_classes=5, layer_scale=1e-2,
                                         **TINY)
    ).eval()
    with torch.no_grad():
        for p in classifier.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # no value left at its initial one
    classifier.save_pretrained(tmp_path / "classifier")
    loaded, info = transformers.AutoModelForImageClassification.from_pretrained(
        tmp_path / "classifier", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        assert torch.equal(classifier(x).logits, loaded.eval()(x).logits)


def test_mask2former_trains_with_the_same_backbone() -> None:
    pytest.importorskip("scipy")
    config = transformers.Mask2FormerConfig(
        backbone_config=InternImageHFConfig.from_variant("internimage_atto", **TINY),
        num_labels=4, hidden_dim=32, mask_feature_size=32, feature_size=32, num_queries=8,
        encoder_layers=1, decoder_layers=2, num_attention_heads=2, dim_feedforward=64,
        encoder_feedforward_dim=64, train_num_points=64, use_timm_backbone=False,
    )
    model = transformers.Mask2FormerForUniversalSegmentation(config)
    encoder = model.model.pixel_level_module.encoder
    assert isinstance(encoder, InternImageHFBackbone)
    masks = [torch.zeros(2, 64, 64), torch.zeros(1, 64, 64)]
    masks[0][0, :32] = 1
    masks[0][1, 32:] = 1
    masks[1][0, :, :20] = 1
    out = model(pixel_values=torch.randn(2, 3, 64, 64), mask_labels=masks,
                class_labels=[torch.tensor([1, 3]), torch.tensor([2])])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    offset_grad = encoder.model.levels[0].blocks[0].dcn.offset.weight.grad
    assert offset_grad is not None and offset_grad.abs().sum() > 0


def _upstream_hf_repository(folder: Path, model: internimage.InternImage) -> Path:
    """A folder laid out like upstream's Hugging Face classification repositories."""
    folder.mkdir()
    config = {
        "architectures": ["InternImageModelForImageClassification"],
        "auto_map": {"AutoConfig": "configuration_internimage.InternImageConfig"},
        "model_type": "internimage",
        "core_op": "DCNv3", "channels": 16, "depths": [1, 1, 1, 1], "groups": [2, 4, 8, 16],
        "layer_scale": 1e-5, "offset_scale": 1.0, "post_norm": True, "mlp_ratio": 4.0,
        "num_classes": 10, "drop_path_rate": 0.1, "cls_scale": 1.5, "with_cp": False,
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config))
    weights = {}
    for name, value in model.state_dict().items():
        name = name.replace(".gamma1", ".layer_scale1").replace(".gamma2", ".layer_scale2")
        weights["model." + name] = value.clone()
    save_file(weights, str(folder / "model.safetensors"))
    return folder


def test_upstream_hugging_face_classifiers_load_both_ways(tmp_path: Path) -> None:
    source = internimage.create_model("internimage_atto", num_classes=10, depths=(1, 1, 1, 1),
                                      layer_scale=1e-5, post_norm=True).eval()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    repository = _upstream_hf_repository(tmp_path / "internimage_tiny", source)
    stored = load_file(str(repository / "model.safetensors"))
    assert any(k.endswith(".layer_scale1") for k in stored) and all(
        k.startswith("model.") for k in stored)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = source(x)

    # 1. this library's loader, strictly
    target = internimage.create_model("internimage_atto", num_classes=10, depths=(1, 1, 1, 1),
                                      layer_scale=1e-5, post_norm=True).eval()
    assert internimage.load_checkpoint(target, repository / "model.safetensors").ok
    with torch.no_grad():
        assert torch.equal(target(x), expected)

    # 2. transformers, without remote code
    loaded, info = transformers.AutoModelForImageClassification.from_pretrained(
        repository, output_loading_info=True
    )
    assert isinstance(loaded, InternImageHFForImageClassification)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x).logits, expected)


def test_a_flash_internimage_backbone_saves_and_loads(tmp_path: Path) -> None:
    config = InternImageHFConfig.from_variant("flash_internimage_atto", **TINY)
    assert config.core_op == "DCNv4" and config.dcn_output_bias is False
    backbone = InternImageHFBackbone(config).eval()
    dcn = backbone.model.levels[0].blocks[0].dcn
    assert isinstance(dcn, DCNv4)
    # transformers' initialisation follows the constructor's: zero offsets and point weights.
    assert torch.count_nonzero(dcn.offset_mask.weight) == 0
    assert dcn.output_proj.bias is None and backbone.model.levels[0].blocks[0].mlp.fc2.bias is None
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    backbone.save_pretrained(tmp_path / "flash")
    saved = json.loads((tmp_path / "flash" / "config.json").read_text())
    assert saved["core_op"] == "DCNv4" and saved["dcn_output_bias"] is False
    # (AutoBackbone.from_pretrained asks the hub about any path first.)
    loaded = InternImageHFBackbone.from_pretrained(tmp_path / "flash").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(loaded(x).feature_maps, backbone(x).feature_maps, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # An InternImage config is saved without the FlashInternImage fields, as before.
    plain = InternImageHFConfig.from_variant("internimage_atto", **TINY).to_dict()
    assert "dcn_output_bias" not in plain and "mlp_fc2_bias" not in plain
