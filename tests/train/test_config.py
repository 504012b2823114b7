"""Training config: overrides, unknown keys, files and presets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from internimage.train import (
    PRESETS,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config_file,
    save_config,
)


def test_overrides_convert_to_the_field_types() -> None:
    config = apply_overrides(
        TrainConfig(),
        [
            "optim.lr=1e-3",
            "optim.betas=0.9,0.95",
            "optim.layer_decay=0.8",
            "ema_decay=none",
            "model.grad_checkpointing=true",
            "schedule.epochs=7",
            "schedule.warmup_epochs=0.5",
            "data.root=/data/imagenet",
            "augment.mixup_alpha=0",
        ],
    )
    assert config.optim.lr == 1e-3 and config.optim.betas == (0.9, 0.95)
    assert config.optim.layer_decay == 0.8 and config.ema_decay is None
    assert config.model.grad_checkpointing is True and config.schedule.epochs == 7
    assert config.data.root == "/data/imagenet" and config.augment.mixup_alpha == 0.0
    # Untouched fields keep their values; the original is unchanged (frozen).
    assert config.optim.weight_decay == TrainConfig().optim.weight_decay
    assert TrainConfig().optim.lr == 5e-4


@pytest.mark.parametrize(
    ("assignment", "error", "match"),
    [
        ("optim.lrr=1", KeyError, "optim.lrr"),
        ("nosuchsection.x=1", KeyError, "nosuchsection"),
        ("optim=3", ValueError, "section"),
        ("schedule.epochs=2.5", ValueError, "integer"),
        ("model.pretrained=maybe", ValueError, "boolean"),
        ("amp=fp8", ValueError, "amp"),
        ("optim.lr", ValueError, "section.key=value"),
        ("optim.betas=0.9", ValueError, "2 values"),
    ],
)
def test_bad_overrides_raise(assignment: str, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        apply_overrides(TrainConfig(), [assignment])


@pytest.mark.parametrize("text", ["1.5,3.0", "[1.5, 3.0]", "(1.5,3)", " [ 1.5 , 3.0 ] "])
def test_tuple_overrides_accept_list_brackets(text: str) -> None:
    config = apply_overrides(PRESETS["fashion-mnist-scenes"], [f"segmentation.scale_range={text}"])
    assert config.segmentation.scale_range == (1.5, 3.0)


def test_bracketed_tuple_overrides_check_their_length() -> None:
    config = apply_overrides(TrainConfig(), ["model.depths=[1,1,2,1]"])
    assert config.model.depths == (1, 1, 2, 1)
    with pytest.raises(ValueError, match="4 values"):
        apply_overrides(TrainConfig(), ["model.depths=[1,1,2]"])
    with pytest.raises(ValueError, match="2 values"):
        apply_overrides(TrainConfig(), ["optim.betas=[]"])


def test_dict_and_json_round_trip(tmp_path: Path) -> None:
    config = apply_overrides(PRESETS["fashion-mnist"], ["optim.clip_grad=none", "seed=5"])
    assert config_from_dict(config_to_dict(config)) == config
    save_config(config, tmp_path / "config.json")
    loaded = json.loads((tmp_path / "config.json").read_text())
    assert loaded["optim"]["clip_grad"] is None and loaded["seed"] == 5
    assert load_config_file(tmp_path / "config.json") == config


def test_partial_file_on_top_of_a_base(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text(json.dumps({"schedule": {"epochs": 3}}))
    config = load_config_file(tmp_path / "c.json", base=PRESETS["fashion-mnist"])
    assert config.schedule.epochs == 3
    assert config.data.dataset == "fashion-mnist-subset"
    (tmp_path / "bad.json").write_text(json.dumps({"schedule": {"epoch": 3}}))
    with pytest.raises(KeyError, match="schedule.epoch"):
        load_config_file(tmp_path / "bad.json")


def test_yaml_file(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 0.002\nbatch_size: 64\n")
    config = load_config_file(tmp_path / "c.yaml")
    assert config.optim.lr == 0.002 and config.batch_size == 64


def test_imagenet_preset_is_the_upstream_recipe() -> None:
    config = PRESETS["imagenet-1k"]
    assert config.optim.lr == 5e-4 and config.optim.weight_decay == 0.05
    assert config.optim.clip_grad == 5.0 and config.ema_decay == 0.9999
    assert (config.schedule.epochs, config.schedule.warmup_epochs) == (300, 20)
    assert (config.schedule.warmup_lr, config.schedule.min_lr) == (5e-7, 5e-6)
    augment = config.augment
    assert (augment.mixup_alpha, augment.cutmix_alpha, augment.mixup_switch_prob) == (0.8, 1.0, 0.5)
    assert (augment.label_smoothing, augment.random_erasing) == (0.1, 0.25)
    assert (augment.randaugment_ops, augment.randaugment_magnitude) == (2, 9.0)


def test_each_task_brings_its_section_datasets_and_presets() -> None:
    from internimage.classification.augment import AugmentConfig
    from internimage.detection.settings import DetectionConfig
    from internimage.segmentation.settings import SegmentationConfig
    from internimage.train.config import TASK_PACKAGES, all_datasets, task_settings

    config = TrainConfig()
    assert type(config.augment) is AugmentConfig
    assert type(config.segmentation) is SegmentationConfig
    assert type(config.detection) is DetectionConfig
    names = []
    for task in TASK_PACKAGES:
        settings = task_settings(task)
        assert set(settings.DATASETS) <= set(all_datasets())
        for name, preset in settings.presets().items():
            assert preset.task == task and preset.data.dataset in settings.DATASETS
            assert PRESETS[name] == preset
            names.append(name)
    assert list(PRESETS) == names
    # A file written with every section reads back the same (run folders' config.json).
    assert config_from_dict(config_to_dict(PRESETS["coco-3x"])) == PRESETS["coco-3x"]
