"""ONNX export: standard operators only, onnxruntime parity with PyTorch (and with the upstream
golden cases), dynamic axes, every model option, and clear refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed")

from safetensors.torch import load_file  # noqa: E402

import internimage  # noqa: E402
from internimage.errors import ConfigError, MissingDependencyError  # noqa: E402
from internimage.export import OnnxExportReport, export_onnx  # noqa: E402
from internimage.layers.dcnv3 import DCNv3  # noqa: E402
from internimage.models import InternImage, InternImageConfig, load_checkpoint  # noqa: E402
from internimage.ops import use_backend  # noqa: E402

# One block per stage, 16 channels: a few seconds per export.
TINY = InternImageConfig(channels=16, depths=(1, 1, 1, 1), groups=(1, 2, 2, 4))


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Random offset and mask projections (they start at zero): points off the regular grid
    and uneven weights, so that the bilinear sampling is exercised."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, DCNv3):
                for linear in (module.offset, module.mask):
                    linear.weight.normal_(0.0, 0.3, generator=generator)
                    linear.bias.normal_(0.0, 0.3, generator=generator)
                if module.center_feature_scale:
                    module.center_feature_scale_proj_weight.normal_(0.0, 0.3,
                                                                    generator=generator)
    return model


def _tiny(num_classes: int = 10, **overrides: object) -> InternImage:
    return _perturbed(InternImage(TINY.replace(**overrides), num_classes=num_classes))


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(path: Path, images: torch.Tensor) -> list[np.ndarray]:
    session = _session(path)
    return session.run(None, {session.get_inputs()[0].name: images.numpy()})


def _torch(model: torch.nn.Module, images: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad(), use_backend("reference"):
        out = model.eval()(images)
    out = out if isinstance(out, list | tuple) else [out]
    return [t.numpy() for t in out]


def _op_types(path: Path) -> set[tuple[str, str]]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return {(node.domain, node.op_type) for node in graph.node}


def _assert_standard(path: Path) -> None:
    """Only default-domain nodes (no mmdeploy::TRTDCNv3 or any other custom op), the sampling as
    GridSample, and no model-local functions standing in for custom ops."""
    model = onnx.load(str(path), load_external_data=False)
    domains = {node.domain for node in model.graph.node}
    assert domains <= {"", "ai.onnx"}, domains
    assert not model.functions
    assert ("", "GridSample") in _op_types(path)
    assert {entry.domain for entry in model.opset_import} <= {"", "ai.onnx"}


def _close(got: list[np.ndarray], want: list[np.ndarray], tolerance: float = 1e-4) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        scale = max(1.0, float(np.abs(w).max()))
        assert float(np.abs(g - w).max()) <= tolerance * scale


# --- the upstream golden cases ---------------------------------------------------------------


def _golden_classifier(golden_dir: Path, case: str) -> tuple[InternImage, dict[str, torch.Tensor]]:
    cfg = json.loads((golden_dir / f"{case}.json").read_text())
    cfg.pop("input_shape")
    model = InternImage.from_upstream_config(cfg).eval()
    load_checkpoint(model, golden_dir / f"{case}.pth", strict=True)
    return model, load_file(str(golden_dir / f"{case}.safetensors"))


@pytest.fixture(scope="module")
def t_like_export(golden_dir: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> tuple[OnnxExportReport, InternImage, dict[str, torch.Tensor]]:
    """The upstream T-like case (H != W input) exported once with a dynamic batch."""
    model, expected = _golden_classifier(golden_dir, "t_like")
    path = tmp_path_factory.mktemp("t_like") / "t_like.onnx"
    report = export_onnx(model, path, input_shape=tuple(expected["input"].shape))
    return report, model, expected


def test_golden_t_like_reproduces_upstream_in_onnxruntime(t_like_export) -> None:
    report, _, expected = t_like_export
    assert report.opset == 18 and report.input_name == "images"
    assert report.output_names == ("logits",)
    assert report.input_shape == (2, 3, 64, 96)
    assert 0.0 <= report.max_abs_error <= 1e-4
    assert report.external_data is None and report.path.is_file()
    # Upstream's logits, not only our PyTorch model's.
    (logits,) = _run(report.path, expected["input"])
    assert np.abs(logits - expected["logits"].numpy()).max() <= 1e-4
    _assert_standard(report.path)
    assert onnx.load(str(report.path)).opset_import[0].version == 18


def test_the_batch_axis_is_dynamic_and_the_size_fixed(t_like_export) -> None:
    report, model, expected = t_like_export
    assert report.dynamic_axes == {"images": {0: "batch"}, "logits": {0: "batch"}}
    session = _session(report.path)
    assert session.get_inputs()[0].shape == ["batch", 3, 64, 96]
    for batch in (1, 3):
        images = torch.randn(batch, 3, 64, 96)
        (got,) = session.run(None, {"images": images.numpy()})
        _close([got], _torch(model, images))
    # The image size was not asked to be dynamic: another size is refused by the runtime.
    with pytest.raises(Exception, match="(?i)dimension"):
        session.run(None, {"images": np.zeros((1, 3, 64, 64), np.float32)})


@pytest.mark.slow
def test_golden_s_like_post_norm_and_layer_scale(golden_dir: Path, tmp_path: Path) -> None:
    model, expected = _golden_classifier(golden_dir, "s_like")
    report = export_onnx(model, tmp_path / "s.onnx", input_shape=(1, 3, 96, 64))
    assert report.max_abs_error <= 1e-4
    (logits,) = _run(report.path, expected["input"])  # batch 2 through the dynamic axis
    assert np.abs(logits - expected["logits"].numpy()).max() <= 1e-4
    _assert_standard(report.path)


@pytest.mark.slow
def test_golden_upernet_segmentation(golden_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason="the seg extra is not installed")
    from internimage.segmentation import from_mmseg

    cfg = json.loads((golden_dir / "upernet_t_like.json").read_text())
    model = from_mmseg(golden_dir / "upernet_t_like.pth",
                       {k: cfg[k] for k in ("backbone", "decode_head", "auxiliary_head")})
    expected = load_file(str(golden_dir / "upernet_t_like.safetensors"))
    report = export_onnx(model, tmp_path / "upernet.onnx", input_shape=(1, 3, 128, 96))
    assert report.output_names == ("logits",) and report.max_abs_error <= 1e-4
    # mmseg's logits at the input size, for the batch of two through the dynamic axis.
    _close(_run(report.path, expected["input"]), [expected["seg_logits"].numpy()])
    _assert_standard(report.path)


def test_segmentation_image_size_stays_fixed(golden_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason="the seg extra is not installed")
    from internimage.segmentation import upernet_from_mmseg_config

    cfg = json.loads((golden_dir / "upernet_t_like.json").read_text())
    model = upernet_from_mmseg_config(
        {k: cfg[k] for k in ("backbone", "decode_head", "auxiliary_head")}
    )
    with pytest.raises(ConfigError, match="cannot be dynamic.*pyramid pooling.*traced size"):
        export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 3, 64, 64), dynamic_size=True)
    assert not list(tmp_path.iterdir())


# --- the model's options ---------------------------------------------------------------------

# Each set turns on several options at once so that every option is exported by some test. Layer
# scale 0.5 rather than upstream's 1e-5, which would hide the branches it scales.
OPTION_SETS = {
    "post_norm-layer_scale-remove_center-offset_scale-dw5": dict(
        post_norm=True, layer_scale=0.5, remove_center=True, offset_scale=2.0, dw_kernel_size=5,
    ),
}
SLOW_OPTION_SETS = {
    "h_like-clip_head-res_post_norm-center_feature_scale-level2": dict(
        use_clip_projector=True, res_post_norm=True, center_feature_scale=True, dw_kernel_size=5,
        level2_post_norm=True, level2_post_norm_block_ids=(0,),
    ),
    "g_like-post_norm-clip_head-center_feature_scale": dict(
        post_norm=True, use_clip_projector=True, center_feature_scale=True, dw_kernel_size=5,
        level2_post_norm=True, level2_post_norm_block_ids=(0,),
    ),
    "ablations-unshared-sigmoid-one_group": dict(
        dcn_weights="unshared", mask_normalization="sigmoid", dcn_groups=1,
    ),
}


def _export_options(options: dict[str, object], tmp_path: Path) -> None:
    missing = set(options) - set(InternImageConfig.field_names())
    if missing:
        pytest.skip(f"this version has no {', '.join(sorted(missing))} setting")
    model = _tiny(**options)
    report = export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 3, 64, 64))
    assert report.max_abs_error <= 1e-4
    _assert_standard(report.path)
    images = torch.randn(3, 3, 64, 64)
    _close(_run(report.path, images), _torch(model, images))


@pytest.mark.parametrize("options", list(OPTION_SETS.values()), ids=list(OPTION_SETS))
def test_model_options_export(options: dict[str, object], tmp_path: Path) -> None:
    _export_options(options, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("options", list(SLOW_OPTION_SETS.values()), ids=list(SLOW_OPTION_SETS))
def test_more_model_options_export(options: dict[str, object], tmp_path: Path) -> None:
    _export_options(options, tmp_path)


def test_features_only_backbone_gives_four_outputs(tmp_path: Path) -> None:
    model = _perturbed(internimage.create_model("internimage_atto", features_only=True,
                                                depths=(1, 1, 1, 1)))
    report = export_onnx(model, tmp_path / "features.onnx", input_shape=(1, 3, 64, 96))
    assert report.output_names == ("stage0", "stage1", "stage2", "stage3")
    assert report.dynamic_axes == {name: {0: "batch"} for name in ("images", *report.output_names)}
    _assert_standard(report.path)
    images = torch.randn(2, 3, 64, 96)
    got = _run(report.path, images)
    assert [g.shape for g in got] == [(2, 16, 16, 24), (2, 32, 8, 12), (2, 64, 4, 6),
                                      (2, 128, 2, 3)]
    _close(got, _torch(model, images))


def test_dynamic_image_size(tmp_path: Path) -> None:
    # Two stages keep the graph small; the full network is in the slow tests.
    model = _perturbed(internimage.create_model("internimage_atto", features_only=True,
                                                out_indices=(0, 1), depths=(1, 1, 1, 1)))
    report = export_onnx(model, tmp_path / "features.onnx", input_shape=(1, 3, 64, 96),
                         dynamic_size=True)
    assert report.dynamic_axes["images"] == {0: "batch", 2: "height", 3: "width"}
    # Every output's batch and spatial axes are symbolic too.
    for name in ("stage0", "stage1"):
        assert set(report.dynamic_axes[name]) == {0, 2, 3}, report.dynamic_axes[name]
    assert onnx.load(str(report.path)).graph.input[0].type.tensor_type.shape.dim[1].dim_value == 3
    # Other batches and sizes than traced or checked, odd ones and H > W included.
    session = _session(report.path)
    for shape in [(2, 3, 96, 64), (1, 3, 40, 72)]:
        images = torch.randn(shape)
        got = session.run(None, {"images": images.numpy()})
        _close(got, _torch(model, images))
    assert got[1].shape == (1, 32, 5, 9)


@pytest.mark.slow
def test_attention_pooling_head_sizes_are_multiples_of_32(tmp_path: Path) -> None:
    model = _tiny(use_clip_projector=True)
    report = export_onnx(model, tmp_path / "h.onnx", input_shape=(1, 3, 64, 64),
                         dynamic_size=True)
    assert report.dynamic_axes["images"] == {0: "batch", 2: "32*height_blocks",
                                             3: "32*width_blocks"}
    images = torch.randn(2, 3, 96, 128)
    _close(_run(report.path, images), _torch(model, images))


@pytest.mark.slow
def test_dynamic_image_size_through_all_four_stages(tmp_path: Path) -> None:
    model = _perturbed(internimage.create_model("internimage_atto", features_only=True,
                                                depths=(1, 1, 1, 1)))
    report = export_onnx(model, tmp_path / "features.onnx", input_shape=(1, 3, 64, 96),
                         dynamic_size=True)
    images = torch.randn(2, 3, 96, 64)
    got = _run(report.path, images)
    assert got[3].shape == (2, 128, 3, 2)
    _close(got, _torch(model, images))


def test_a_failed_check_writes_nothing_and_the_modes_come_back(tmp_path: Path) -> None:
    model = _tiny()
    model.freeze_stages(1)
    model.train()
    modes = {name: module.training for name, module in model.named_modules()}
    assert not all(modes.values())  # the frozen stem and stage stay in eval mode
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the previous export")
    # What a killed export left (its process is gone), and a running export's folder.
    stale = tmp_path / ".model.onnx.0.dead.tmp"
    running = tmp_path / f".model.onnx.{os.getpid()}.live.tmp"
    for folder in (stale, running):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"partial")
    # No graph agrees to exactly zero in float32: the check must fail and say by how much.
    with pytest.raises(RuntimeError, match=r"max abs error \d.* > 0 .*not written"):
        export_onnx(model, target, input_shape=(1, 3, 32, 32), tolerance=0.0)
    assert target.read_bytes() == b"the previous export"
    # No temporaries of this export left, the killed one's removed, the running one's kept.
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "model.onnx"]
    assert {name: module.training for name, module in model.named_modules()} == modes


@pytest.mark.slow
def test_large_graphs_keep_their_weights_beside_the_file(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend the tiny model is over the exporter's single-file limit (1.5 GiB of weights, as
    # the H and G variants are).
    from torch.onnx._internal.exporter import _onnx_program

    monkeypatch.setattr(_onnx_program, "_LARGE_MODEL_THRESHOLD", 0)
    model = _tiny()
    path = tmp_path / "big.onnx"
    report = export_onnx(model, path, input_shape=(1, 3, 32, 32))
    assert report.external_data == tmp_path / "big.onnx.data"
    assert report.external_data.stat().st_size > path.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    images = torch.randn(2, 3, 32, 32)
    _close(_run(path, images), _torch(model, images))
    # A single-file export to the same path takes the old graph's weights file away.
    monkeypatch.undo()
    assert export_onnx(model, path, input_shape=(1, 3, 32, 32)).external_data is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx"]
    _close(_run(path, images), _torch(model, images))


def _fpn() -> torch.nn.Module:
    pytest.importorskip("torchvision", reason="the det extra is not installed")
    from internimage.detection.model import DetectorHeads, build_mask_rcnn

    detector = build_mask_rcnn(InternImage(TINY, num_classes=0), num_classes=2,
                               heads=DetectorHeads(fpn_channels=16))
    return _perturbed(detector.backbone)


def _hf(kind: str) -> torch.nn.Module:
    pytest.importorskip("transformers", reason="the seg extra is not installed")
    from internimage.models.hf import (
        InternImageHFBackbone,
        InternImageHFConfig,
        InternImageHFForImageClassification,
    )

    config = InternImageHFConfig(channels=16, depths=[1, 1, 1, 1], groups=[1, 2, 2, 4],
                                 num_classes=5)
    cls = InternImageHFBackbone if kind == "backbone" else InternImageHFForImageClassification
    return _perturbed(cls(config))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("build", "names"),
    [
        (_fpn, ("p2", "p3", "p4", "p5", "p6")),
        (lambda: _hf("backbone"), ("stage0", "stage1", "stage2", "stage3")),
        (lambda: _hf("classifier"), ("logits",)),
    ],
    ids=["detector_fpn", "hf_backbone", "hf_classifier"],
)
def test_other_wrappers_of_the_network(build, names: tuple[str, ...], tmp_path: Path) -> None:
    model = build()
    report = export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 3, 64, 64))
    assert report.output_names == names and report.max_abs_error <= 1e-4
    _assert_standard(report.path)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), use_backend("reference"):
        out = model.eval()(images)
    if hasattr(out, "feature_maps"):  # transformers' outputs are dicts too
        want = list(out.feature_maps)
    elif hasattr(out, "logits"):
        want = [out.logits]
    else:
        want = list(out.values())  # the FPN's maps by name
    _close(_run(report.path, images), [t.numpy() for t in want])


# --- refusals --------------------------------------------------------------------------------


def test_a_detector_is_refused_with_the_reason(tmp_path: Path) -> None:
    pytest.importorskip("torchvision", reason="the det extra is not installed")
    from internimage.detection.model import DetectorHeads, build_mask_rcnn

    detector = build_mask_rcnn(
        InternImage(TINY, num_classes=0), num_classes=2,
        heads=DetectorHeads(fpn_channels=16, box_fc_channels=16, mask_channels=16),
    )
    with pytest.raises(ConfigError, match="Mask R-CNN.*data-dependent.*NMS.*detector.backbone"):
        export_onnx(detector, tmp_path / "d.onnx", input_shape=(1, 3, 64, 64))
    assert not list(tmp_path.iterdir())


def test_other_modules_are_refused() -> None:
    with pytest.raises(TypeError, match="InternImage classifier.*got Conv2d"):
        export_onnx(torch.nn.Conv2d(3, 3, 1), "x.onnx", input_shape=(1, 3, 32, 32))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"input_shape": (1, 1, 32, 32)}, r"\(N, 3, H, W\)"),
        ({"input_shape": (1, 3, 32)}, r"\(N, 3, H, W\)"),
        ({"input_shape": (0, 3, 32, 32)}, r"\(N, 3, H, W\)"),
        ({"input_shape": "1,3,32,32"}, r"\(N, 3, H, W\)"),
        ({"input_shape": (1, 3, 32, 32), "opset": 17}, "from 18.*LayerNormalization"),
        ({"input_shape": (1, 3, 32, 32), "opset": 99}, r"from 18 .* to \d+ .*got 99"),
        ({"input_shape": (1, 3, 32, 32), "tolerance": float("nan")}, "tolerance"),
    ],
)
def test_bad_arguments_are_config_errors(arguments: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        export_onnx(_tiny(), tmp_path / "m.onnx", **arguments)
    assert not list(tmp_path.iterdir())


def test_weights_that_cannot_be_checked_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="float64 weights; export model.float"):
        export_onnx(_tiny().double(), tmp_path / "m.onnx", input_shape=(1, 3, 32, 32))
    with torch.device("meta"):
        meta = InternImage(TINY)
    with pytest.raises(ConfigError, match="meta device"):
        export_onnx(meta, tmp_path / "m.onnx", input_shape=(1, 3, 32, 32))
    with pytest.raises(ConfigError, match="is a folder"):
        export_onnx(_tiny(), tmp_path, input_shape=(1, 3, 32, 32))


def test_sizes_the_attention_pooling_head_cannot_take(tmp_path: Path) -> None:
    model = _tiny(use_clip_projector=True)
    with pytest.raises(ConfigError, match="multiples of 32, got 48x64"):
        export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 3, 48, 64), dynamic_size=True)
    # The model's own refusal, before anything is traced.
    with pytest.raises(ConfigError, match=r"does not take input_shape \(1, 3, 48, 64\).*32"):
        export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 3, 48, 64))
    assert not list(tmp_path.iterdir())


def test_missing_onnxruntime_names_the_extra(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(MissingDependencyError, match=r"onnxruntime is not installed.*"
                                                     r"pip install 'internimage\[onnx\]'"):
        export_onnx(_tiny(), tmp_path / "m.onnx", input_shape=(1, 3, 32, 32))


def test_import_internimage_does_not_import_onnx() -> None:
    program = (
        "import sys\nimport internimage, internimage.export\n"
        "assert callable(internimage.export_onnx)\n"
        "print(sorted(m for m in ('onnx', 'onnxruntime', 'onnxscript') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
