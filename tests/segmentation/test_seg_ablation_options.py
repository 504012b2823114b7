"""The DCNv3 ablation options in segmentation: the training config's ``model.*`` options reach
UperNet's InternImage backbone through the transformers config, which saves and loads them."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the seg extra is not installed")

import internimage  # noqa: E402
from internimage.layers import DCNv3  # noqa: E402
from internimage.layers.dcnv3 import PointProjection  # noqa: E402
from internimage.models.hf import (  # noqa: E402
    ABLATION_DEFAULTS,
    InternImageHFBackbone,
    InternImageHFConfig,
)
from internimage.ops import use_backend  # noqa: E402
from internimage.segmentation.data import collate_segmentation  # noqa: E402
from internimage.segmentation.upernet import upernet_config  # noqa: E402
from internimage.train import apply_overrides, config_from_dict, config_to_dict  # noqa: E402
from internimage.train.config import PRESETS  # noqa: E402
from internimage.train.tasks import create_task  # noqa: E402

# The demo preset shrunk: a one-block-per-stage atto (widths 16, 32, 64, 128) on 32-px crops.
TINY = ["device=cpu", "model.depths=1,1,1,1", "data.image_size=32", "progress=false"]
CLASSES = tuple(f"c{i}" for i in range(4))
WIDTHS = (16, 32, 64, 128)
ATTO_GROUPS = (2, 4, 8, 16)
OPTIONS = {
    "unshared": ["model.dcn_weights=unshared"],
    "single-group": ["model.dcn_groups=1"],
    "sigmoid": ["model.mask_normalization=sigmoid"],
    "all": ["model.dcn_weights=unshared", "model.dcn_groups=2",
            "model.mask_normalization=sigmoid"],
}


def _dcns(model: torch.nn.Module) -> list[DCNv3]:
    return [m for m in model.modules() if isinstance(m, DCNv3)]


def _tiny_upernet(**options: object) -> transformers.UperNetForSemanticSegmentation:
    backbone = InternImageHFConfig.from_variant("internimage_atto", depths=[1, 1, 1, 1],
                                                **options)
    return transformers.UperNetForSemanticSegmentation(
        upernet_config(backbone, num_classes=len(CLASSES), hidden_size=16, auxiliary_channels=8)
    )


@pytest.mark.parametrize("variant", list(OPTIONS))
def test_the_segmentation_task_builds_and_trains_the_option(variant: str) -> None:
    torch.manual_seed(0)
    config = apply_overrides(PRESETS["fashion-mnist-scenes"], TINY + OPTIONS[variant])
    # The run's config.json keeps them (resume, inference from a checkpoint).
    assert config_from_dict(config_to_dict(config)) == config
    task = create_task(config)
    task.classes = CLASSES
    model = task.build_model()
    backbone = model.backbone
    assert isinstance(backbone, InternImageHFBackbone)
    dcns = _dcns(backbone)
    assert len(dcns) == 4
    unshared = variant in ("unshared", "all")
    groups = {"single-group": (1,) * 4, "all": (2,) * 4}.get(variant, ATTO_GROUPS)
    sigmoid = variant in ("sigmoid", "all")
    for dcn, width, group in zip(dcns, WIDTHS, groups, strict=True):
        assert dcn.group == group
        assert dcn.weight_sharing == ("unshared" if unshared else "shared")
        assert dcn.mask_normalization == ("sigmoid" if sigmoid else "softmax")
        assert isinstance(dcn.output_proj, PointProjection) == unshared
        expected = (9, width, width) if unshared else (width, width)
        assert tuple(dcn.output_proj.weight.shape) == expected
        assert dcn.mask.out_features == group * 9
    # The group count is a stage setting of the backbone's own config too.
    assert backbone.model.config.stage_groups == groups

    task.setup(torch.device("cpu"))
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    masks = torch.randint(0, len(CLASSES), (2, 32, 32))
    batch = collate_segmentation(list(zip(images, masks, strict=True)))
    with use_backend("reference"):
        loss = task.training_losses(model, batch, torch.device("cpu"),
                                    contextlib.nullcontext)["loss"]
        loss.backward()
    assert torch.isfinite(loss)
    trained = [p for p in backbone.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for p in trained)


def test_unshared_projections_start_like_the_librarys_model() -> None:
    """transformers initialises sub-models itself: the per-point matrices get the library's
    xavier-uniform bound and a zero bias, the offsets and point weights still start at zero."""
    torch.manual_seed(0)
    model = _tiny_upernet(dcn_weights="unshared")
    for dcn, width in zip(_dcns(model.backbone), WIDTHS, strict=True):
        weight = dcn.output_proj.weight.detach()
        bound = (6.0 / (2 * width)) ** 0.5
        assert float(weight.abs().max()) <= bound
        assert float(weight.std()) == pytest.approx(bound / 3**0.5, rel=0.2)
        assert torch.count_nonzero(dcn.output_proj.bias) == 0
        assert torch.count_nonzero(dcn.offset.weight) == 0
        assert torch.count_nonzero(dcn.mask.weight) == 0


def test_a_config_with_the_options_round_trips_through_save_pretrained(tmp_path: Path) -> None:
    torch.manual_seed(0)
    options = {"dcn_weights": "unshared", "dcn_groups": 1, "mask_normalization": "sigmoid"}
    model = _tiny_upernet(**options).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # offsets and point weights away from zero
    model.save_pretrained(tmp_path / "upernet")
    stored = json.loads((tmp_path / "upernet" / "config.json").read_text())["backbone_config"]
    assert {k: stored[k] for k in options} == options
    loaded, info = transformers.AutoModelForSemanticSegmentation.from_pretrained(
        tmp_path / "upernet", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    assert loaded.config.backbone_config.ablation_options() == options
    dcn = _dcns(loaded.backbone)[0]
    assert (dcn.weight_sharing, dcn.group, dcn.mask_normalization) == ("unshared", 1, "sigmoid")
    # The weights come back bit for bit ...
    saved_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert list(loaded_state) == list(saved_state)
    assert all(torch.equal(loaded_state[k], v) for k, v in saved_state.items())
    # ... but not at the same addresses: transformers' loader leaves the tensors at addresses
    # that are not 64-byte aligned, and CPU kernels may pick other vector paths (another
    # summation order) for those, so the outputs agree to rounding, not bit for bit.
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), use_backend("reference"):
        expected = model(x).logits
        assert expected.abs().max() > 1e-3  # a real output, not a vanishing one
        torch.testing.assert_close(loaded.eval()(x).logits, expected, rtol=1e-6, atol=1e-6)


def test_default_configs_save_as_before_and_files_without_the_fields_load_as_dcnv3(
    tmp_path: Path,
) -> None:
    config = InternImageHFConfig.from_variant("internimage_atto", depths=[1, 1, 1, 1])
    assert config.ablation_options() == ABLATION_DEFAULTS
    upernet = upernet_config(config, num_classes=3, hidden_size=16, auxiliary_channels=8)
    upernet.save_pretrained(tmp_path / "upernet")
    config.save_pretrained(tmp_path / "backbone")
    for saved in (
        json.loads((tmp_path / "upernet" / "config.json").read_text())["backbone_config"],
        json.loads((tmp_path / "backbone" / "config.json").read_text()),
    ):
        # The keys of the upstream format only, as before the ablation fields existed.
        assert not set(saved) & set(ABLATION_DEFAULTS)
        assert saved["groups"] == [2, 4, 8, 16]
    again = transformers.AutoConfig.from_pretrained(tmp_path / "backbone")
    assert isinstance(again, InternImageHFConfig)
    assert again.ablation_options() == ABLATION_DEFAULTS
    # Only a set option is written; the others stay out.
    InternImageHFConfig.from_variant(
        "internimage_atto", mask_normalization="sigmoid"
    ).save_pretrained(tmp_path / "sigmoid")
    saved = json.loads((tmp_path / "sigmoid" / "config.json").read_text())
    assert saved["mask_normalization"] == "sigmoid"
    assert "dcn_weights" not in saved and "dcn_groups" not in saved


def test_upstream_arguments_fold_the_group_count_and_refuse_the_others() -> None:
    config = InternImageHFConfig.from_variant("internimage_atto", dcn_groups=1)
    assert config.upstream_arguments()["groups"] == (1, 1, 1, 1)
    assert list(config.groups) == list(ATTO_GROUPS)
    for option in ({"dcn_weights": "unshared"}, {"mask_normalization": "sigmoid"}):
        with pytest.raises(ValueError, match="no upstream InternImage argument"):
            InternImageHFConfig.from_variant("internimage_atto", **option).upstream_arguments()


@pytest.mark.parametrize(
    ("option", "match"),
    [
        ({"dcn_weights": "per-point"}, "dcn_weights must be one of"),
        ({"mask_normalization": "relu"}, "mask_normalization must be one of"),
        ({"dcn_groups": 0}, "dcn_groups must be a positive integer"),
    ],
)
def test_bad_values_raise(option: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        InternImageHFConfig.from_variant("internimage_atto", **option)


def test_a_group_count_that_does_not_divide_a_width_raises_when_built() -> None:
    with pytest.raises(ValueError, match="dcn_groups=3 must divide"):
        InternImageHFBackbone(InternImageHFConfig.from_variant(
            "internimage_atto", depths=[1, 1, 1, 1], dcn_groups=3))


def test_a_run_starts_from_a_classifier_trained_with_the_same_option(tmp_path: Path) -> None:
    classifier = internimage.create_model(
        "internimage_atto", num_classes=10, depths=(1, 1, 1, 1), dcn_weights="unshared",
        dcn_groups=1,
    )
    with torch.no_grad():
        for p in classifier.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / "classifier.pt"
    torch.save({"model": classifier.state_dict()}, path)
    config = apply_overrides(
        PRESETS["fashion-mnist-scenes"],
        TINY + OPTIONS["unshared"] + ["model.dcn_groups=1", f"model.finetune={path}"],
    )
    task = create_task(config)
    task.classes = CLASSES
    backbone = task.build_model().backbone.model.state_dict()
    source = classifier.state_dict()
    assert all(torch.equal(value, source[key]) for key, value in backbone.items())
