"""The ablation fields of InternImageConfig: validation, serialisation, the network they build,
parameter and MAC counts, upstream arguments and the training config's ``model.*`` options."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from internimage import count_macs
from internimage.layers import DCNv3
from internimage.layers.dcnv3 import PointProjection
from internimage.models.config import VARIANTS, InternImageConfig
from internimage.models.internimage import InternImage, upstream_arguments
from internimage.models.macs import count_macs_by_hooks
from internimage.ops import use_backend
from internimage.train import TrainConfig, apply_overrides, config_from_dict, config_to_dict

ABLATION_FIELDS = ("dcn_weights", "dcn_groups", "mask_normalization")
# A tiny network: atto's widths (16, 32, 64, 128), one block per stage.
TINY = VARIANTS["internimage_atto"].config.replace(depths=(1, 1, 1, 1))


def _meta_model(config: InternImageConfig) -> InternImage:
    with torch.device("meta"):
        return InternImage(config)


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _without_ablation_fields(config: InternImageConfig) -> InternImageConfig:
    """The config rebuilt from only the fields that existed before the ablation options."""
    old = {
        f.name: getattr(config, f.name) for f in dataclasses.fields(config)
        if f.name not in ABLATION_FIELDS
    }
    return InternImageConfig(**old)


def test_defaults_are_the_paper_dcnv3() -> None:
    for info in VARIANTS.values():
        config = info.config
        assert (config.dcn_weights, config.dcn_groups, config.mask_normalization) == (
            "shared", None, "softmax"
        )
        assert not config.is_ablation and config.stage_groups == config.groups


@pytest.mark.parametrize("name", ["internimage_t", "internimage_h"])
def test_default_state_dict_is_unchanged(name: str) -> None:
    config = VARIANTS[name].config
    model = _meta_model(config)
    assert _shapes(model) == _shapes(_meta_model(_without_ablation_fields(config)))
    assert not any(isinstance(m, PointProjection) for m in model.modules())
    # Upstream arguments: no new names, the same as before.
    arguments = upstream_arguments(config)
    assert not set(arguments) & set(ABLATION_FIELDS)
    assert arguments == upstream_arguments(_without_ablation_fields(config))
    assert arguments["groups"] == list(config.groups)


def test_unshared_keeps_the_keys_and_adds_p_minus_one_matrices_per_block() -> None:
    shared, unshared = _meta_model(TINY), _meta_model(TINY.replace(dcn_weights="unshared"))
    a, b = _shapes(shared), _shapes(unshared)
    assert set(a) == set(b)
    changed = {k for k in a if a[k] != b[k]}
    assert changed == {f"levels.{i}.blocks.0.dcn.output_proj.weight" for i in range(4)}
    for i, c in enumerate(TINY.stage_channels):
        assert b[f"levels.{i}.blocks.0.dcn.output_proj.weight"] == (9, c, c)
    expected = sum(d * 8 * c * c for d, c in zip(TINY.depths, TINY.stage_channels, strict=True))
    assert _params(unshared) - _params(shared) == expected


@pytest.mark.parametrize("name", ["internimage_t", "internimage_h"])
def test_unshared_parameter_delta_of_released_variants(name: str) -> None:
    config = VARIANTS[name].config
    points = 9 - int(config.remove_center)
    delta = _params(_meta_model(config.replace(dcn_weights="unshared"))) - _params(
        _meta_model(config)
    )
    assert delta == sum(
        d * (points - 1) * c * c for d, c in zip(config.depths, config.stage_channels, strict=True)
    )


def test_sigmoid_changes_no_parameter_and_sets_the_attribute() -> None:
    model = _meta_model(TINY.replace(mask_normalization="sigmoid"))
    assert _shapes(model) == _shapes(_meta_model(TINY))
    dcns = [m for m in model.modules() if isinstance(m, DCNv3)]
    assert len(dcns) == 4 and all(m.mask_normalization == "sigmoid" for m in dcns)


def test_dcn_groups_overrides_every_stage() -> None:
    model = _meta_model(TINY.replace(dcn_groups=1))
    dcns = [m for m in model.modules() if isinstance(m, DCNv3)]
    assert [m.group for m in dcns] == [1, 1, 1, 1]
    assert all(m.offset.out_features == 9 * 2 and m.mask.out_features == 9 for m in dcns)
    # Offset and mask linears shrink from G*P*3 to P*3 outputs (weights and biases).
    delta = _params(_meta_model(TINY)) - _params(model)
    assert delta == sum(
        d * (g - 1) * 9 * 3 * (c + 1)
        for d, g, c in zip(TINY.depths, TINY.groups, TINY.stage_channels, strict=True)
    )
    assert TINY.replace(dcn_groups=1).stage_groups == (1, 1, 1, 1)
    assert TINY.replace(dcn_groups=4).stage_groups == (4, 4, 4, 4)
    # It overrides groups, which keep their value.
    assert TINY.replace(dcn_groups=1).groups == TINY.groups
    # Upstream has the same architecture with groups set.
    assert upstream_arguments(TINY.replace(dcn_groups=1))["groups"] == [1, 1, 1, 1]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"dcn_weights": "per-point"}, r"dcn_weights must be one of \('shared', 'unshared'\)"),
        (
            {"mask_normalization": "relu"},
            r"mask_normalization must be one of \('softmax', 'sigmoid'\)",
        ),
        ({"dcn_groups": 3}, "dcn_groups=3 must divide every stage's width"),
        ({"dcn_groups": 0}, "dcn_groups must be a positive integer"),
        ({"dcn_groups": True}, "dcn_groups must be a positive integer"),
        ({"dcn_group": 1}, "unknown InternImage setting"),
    ],
)
def test_invalid_values_raise(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TINY.replace(**overrides)


@pytest.mark.parametrize(
    "overrides", [{"dcn_weights": "unshared"}, {"mask_normalization": "sigmoid"}]
)
def test_ablations_without_upstream_equivalent_refuse_upstream_arguments(
    overrides: dict[str, str],
) -> None:
    with pytest.raises(ValueError, match="no upstream InternImage argument"):
        upstream_arguments(TINY.replace(**overrides))


def test_config_round_trips_through_json() -> None:
    config = TINY.replace(dcn_weights="unshared", dcn_groups=2, mask_normalization="sigmoid")
    text = json.dumps(dataclasses.asdict(config))
    assert InternImageConfig(**json.loads(text)) == config
    assert hash(config) != hash(TINY)


def test_macs_count_the_per_point_projections() -> None:
    shape = (1, 3, 64, 64)
    shared, unshared = _meta_model(TINY), _meta_model(TINY.replace(dcn_weights="unshared"))
    # Stage i runs on (64 / 4 / 2^i)^2 pixels; each block gains P-1 = 8 extra C x C matmuls.
    pixels = [(16 // 2**i) ** 2 for i in range(4)]
    extra = sum(
        d * q * 8 * c * c
        for d, q, c in zip(TINY.depths, pixels, TINY.stage_channels, strict=True)
    )
    assert count_macs(unshared, shape) - count_macs(shared, shape) == extra
    assert count_macs_by_hooks(unshared, shape) == count_macs(unshared, shape)
    grouped = _meta_model(TINY.replace(dcn_groups=1))
    assert count_macs_by_hooks(grouped, shape) == count_macs(grouped, shape)


@pytest.mark.parametrize(
    "overrides",
    [
        {"dcn_weights": "unshared"},
        {"mask_normalization": "sigmoid", "dcn_groups": 1},
        {"dcn_weights": "unshared", "mask_normalization": "sigmoid", "dcn_groups": 2},
    ],
)
def test_tiny_network_trains_with_the_options(overrides: dict[str, object]) -> None:
    model = InternImage(TINY.replace(**overrides), num_classes=3)
    images = torch.randn(2, 3, 32, 32)
    with use_backend("reference"):
        loss = torch.nn.functional.cross_entropy(model(images), torch.tensor([0, 2]))
        loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_create_model_passes_the_options() -> None:
    import internimage

    model = internimage.create_model(
        "internimage_atto", num_classes=0, depths=(1, 1, 1, 1), dcn_weights="unshared"
    )
    assert isinstance(model.levels[0].blocks[0].dcn.output_proj, PointProjection)


def test_training_config_takes_the_options() -> None:
    config = apply_overrides(
        TrainConfig(),
        ["model.dcn_weights=unshared", "model.dcn_groups=1", "model.mask_normalization=sigmoid"],
    )
    assert config.model.architecture_overrides() == {
        "dcn_weights": "unshared", "dcn_groups": 1, "mask_normalization": "sigmoid"
    }
    assert config_from_dict(config_to_dict(config)) == config
    # Checkpoints of older runs lack the keys: they mean the variant's (paper) settings.
    older = config_to_dict(TrainConfig())
    for name in ABLATION_FIELDS:
        del older["model"][name]
    assert config_from_dict(older).model.architecture_overrides() == {}


@pytest.mark.parametrize(
    ("assignment", "match"),
    [
        ("model.dcn_weights=per-point", "dcn_weights must be one of"),
        ("model.mask_normalization=relu", "mask_normalization must be one of"),
        ("model.dcn_groups=5", "dcn_groups=5 must divide"),
        ("model.dcn_groups=two", "integer"),
    ],
)
def test_training_config_rejects_bad_options(assignment: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        apply_overrides(TrainConfig(), [assignment])


def test_segmentation_task_takes_the_options() -> None:
    # Its UperNet backbone gets them through the transformers config (tests/segmentation).
    config = apply_overrides(
        TrainConfig(),
        ["task=segmentation", "data.dataset=ade20k", "model.dcn_weights=unshared"],
    )
    assert config.model.architecture_overrides() == {"dcn_weights": "unshared"}
