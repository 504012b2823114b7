"""Export to ONNX: graphs of standard operators only, checked in onnxruntime against PyTorch.

Upstream's deployment path exports DCNv3 as a TensorRT-only ``mmdeploy::TRTDCNv3`` node. Here the
operator is traced through its pure-PyTorch reference (:mod:`internimage.ops.reference`), which
samples with ``grid_sample``; the graph then holds ONNX ``GridSample`` and ordinary arithmetic, and
runs in any ONNX runtime.

Exporter: ``torch.onnx.export(..., dynamo=True)``, the exporter built on ``torch.export``. The
TorchScript exporter (``dynamo=False``) is deprecated since torch 2.9 and fails on the
segmentation model (its ``adaptive_avg_pool2d`` needs static input sizes that tracing through
DCNv3's reshapes loses); ``torch.export`` keeps symbolic sizes, so dynamic batch and image sizes
are checked for consistency at export time rather than guessed.

Opset: 18 by default, the opset the exporter translates to natively (its operator library is
written for 18; a lower opset goes through a version converter, and LayerNormalization needs 17
anyway). It has everything needed, ``GridSample`` (16) included, and runs in onnxruntime 1.14 and
later. Higher opsets, up to the newest that the installed torch and onnx both know, can be
asked for.

Needs the ``onnx`` extra (``pip install 'internimage[onnx]'``); ``import internimage`` does not
import it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from internimage.errors import ConfigError, MissingDependencyError
from internimage.files import process_alive
from internimage.models.internimage import InternImage, InternImageFeatures
from internimage.ops import use_backend

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "OnnxExportReport",
    "detector_error",
    "export_onnx",
    "require_onnx",
]

#: Opset written when none is asked for (see the module docstring).
DEFAULT_OPSET = 18
#: Lowest opset accepted: the exporter's own (GridSample needs 16, LayerNormalization 17).
MIN_OPSET = 18
#: Largest |onnxruntime - PyTorch| accepted on the check input, in float32.
DEFAULT_TOLERANCE = 1e-4

_INSTALL_HINT = "pip install 'internimage[onnx]'"
_INPUT_NAME = "images"
# Seed of the random check input: the same input for every export of the same shape.
_CHECK_SEED = 0
# Smallest traced side of a dynamic-size graph: the last stage (stride 32) at 2x2, not 1x1, which
# torch.export would specialise.
_MIN_TRACE_SIDE = 64
# Smallest image side a dynamic-size graph declares: one pixel at stride 32.
_MIN_DYNAMIC_SIDE = 32
# Both parts of a model's names in its type's method resolution order, for the classes of optional
# packages (checked by name so that their packages need not be imported).
_UPERNET = ("transformers.models.upernet.modeling_upernet", "UperNetForSemanticSegmentation")
_HF_BACKBONE = ("internimage.models.hf", "InternImageHFBackbone")
_HF_CLASSIFIER = ("internimage.models.hf", "InternImageHFForImageClassification")
_DETECTOR = ("torchvision.models.detection.generalized_rcnn", "GeneralizedRCNN")
_FPN = ("internimage.detection.model", "InternImageFPN")


@dataclass(frozen=True)
class OnnxExportReport:
    """What :func:`export_onnx` wrote and how well it agrees with PyTorch.

    Attributes:
        path: The ONNX file.
        opset: Its ONNX opset (default domain).
        input_name: Name of the graph's one input, ``[N, 3, H, W]`` float32 images.
        output_names: Names of its outputs, in the model's order.
        input_shape: Shape of the check input the graph was verified on.
        dynamic_axes: Symbolic axes of each input and output, ``{name: {axis: symbol}}``, read
            back from the written graph.
        max_abs_error: Largest absolute difference between onnxruntime and PyTorch over all
            outputs, on a seeded random input of ``input_shape``.
        external_data: File holding the weights beside ``path`` for graphs too large for one
            protobuf (over 1.5 GiB of weights), None when the weights are inside ``path``.
        seconds: Wall time of the whole export, checks included.
    """

    path: Path
    opset: int
    input_name: str
    output_names: tuple[str, ...]
    input_shape: tuple[int, int, int, int]
    dynamic_axes: dict[str, dict[int, str]] = field(hash=False)
    max_abs_error: float
    external_data: Path | None
    seconds: float


class _Images(nn.Module):
    """The model with one image tensor in and a tuple of plain tensors out, as ONNX has them.

    Args:
        model: The model to export.
        call: Turns ``(model, images)`` into the output tensors.
    """

    def __init__(
        self, model: nn.Module, call: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, ...]]
    ) -> None:
        super().__init__()
        self.model = model
        self._call = call

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``[N, 3, H, W]`` -> the model's outputs."""
        return self._call(self.model, images)


@dataclass(frozen=True)
class _Plan:
    """How one kind of model is exported: its wrapper, output names, size constraint."""

    module: _Images
    output_names: tuple[str, ...]
    # Image sides must be multiples of this (the attention-pooling head fuses two stages).
    side_multiple: int = 1
    # Why the image size cannot be dynamic in the graph, None where it can.
    fixed_size: str | None = None


def _has_class(model: nn.Module, qualified: tuple[str, str]) -> bool:
    module_name, class_name = qualified
    return any(
        cls.__module__ == module_name and cls.__name__ == class_name for cls in type(model).__mro__
    )


def detector_error() -> ConfigError:
    """The error that refuses a detector (also raised by the command line before loading one)."""
    return ConfigError(
        "a Mask R-CNN detector cannot be exported as a plain ONNX graph: after the backbone it "
        "keeps a data-dependent number of boxes (score threshold, batched NMS), which "
        "torch.export cannot trace, and it calls torchvision's own nms and roi_align operators; "
        "export its backbone and FPN instead (from Python: export_onnx(detector.backbone, ...) "
        "gives the five FPN maps P2-P6)"
    )


def _plan(model: nn.Module) -> _Plan:
    """The export plan of a supported model.

    Raises:
        ConfigError: A detector (see the message).
        TypeError: Any other kind of model.
    """
    if isinstance(model, InternImage):
        name = "logits" if model.num_classes > 0 else "features"
        multiple = 32 if model.config.use_clip_projector else 1
        return _Plan(_Images(model, lambda m, x: (m(x),)), (name,), multiple)
    if isinstance(model, InternImageFeatures):
        names = tuple(f"stage{i}" for i in model.out_indices)
        return _Plan(_Images(model, lambda m, x: tuple(m(x))), names)
    if _has_class(model, _UPERNET):
        # transformers' output object holds the logits at the input size (and no loss in eval).
        return _Plan(
            _Images(model, lambda m, x: (m(pixel_values=x).logits,)), ("logits",),
            fixed_size=(
                "UperNet's pyramid pooling (adaptive average pooling of the last stage to 1, 2, "
                "3 and 6 cells) is exported with pooling indices computed for the traced size"
            ),
        )
    if _has_class(model, _HF_CLASSIFIER):
        multiple = 32 if model.config.use_clip_projector else 1
        return _Plan(
            _Images(model, lambda m, x: (m(pixel_values=x).logits,)), ("logits",), multiple
        )
    if _has_class(model, _HF_BACKBONE):
        names = tuple(f"stage{i}" for i in model.config.out_indices)
        return _Plan(
            _Images(model, lambda m, x: tuple(m(pixel_values=x).feature_maps)), names
        )
    if _has_class(model, _FPN):
        names = ("p2", "p3", "p4", "p5", "p6")
        return _Plan(_Images(model, lambda m, x: tuple(m(x).values())), names)
    if _has_class(model, _DETECTOR):
        raise detector_error()
    raise TypeError(
        f"export_onnx takes an InternImage classifier, an InternImageFeatures backbone "
        f"(create_model(..., features_only=True)), a segmentation model (transformers' "
        f"UperNetForSemanticSegmentation over InternImage), InternImage's transformers "
        f"classifier or backbone, or a detector's InternImageFPN; got {type(model).__name__}"
    )


def require_onnx() -> tuple[Any, Any]:
    """``(onnx, onnxruntime)``, imported; onnxscript is checked too (the exporter needs it).

    Raises:
        MissingDependencyError: A package is not installed, or torch is too old.
    """
    version = tuple(int(part) for part in torch.__version__.split(".")[:2])
    if version < (2, 5):
        raise MissingDependencyError(
            f"ONNX export needs torch >= 2.5 (its torch.export-based exporter), found "
            f"{torch.__version__}: pip install 'torch>=2.5'"
        )
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (imported by torch.onnx's exporter)
    except ImportError as error:
        missing = (error.name or "onnx").split(".")[0]
        raise MissingDependencyError(
            f"ONNX export needs onnx, onnxruntime and onnxscript ({missing} is not installed): "
            f"{_INSTALL_HINT}"
        ) from error
    return onnx, onnxruntime


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int, int]:
    try:
        shape = tuple(int(v) for v in input_shape)
        exact = all(int(v) == v for v in input_shape)
    except (TypeError, ValueError):
        raise ConfigError(
            f"input_shape must be four integers (N, 3, H, W), got {input_shape!r}"
        ) from None
    if len(shape) != 4 or not exact or min(shape) < 1 or shape[1] != 3:
        raise ConfigError(
            f"input_shape must be (N, 3, H, W) with positive integers, got {tuple(input_shape)}"
        )
    return shape  # type: ignore[return-value]


def _check_opset(opset: int | None, onnx: Any) -> int:
    if opset is None:
        return DEFAULT_OPSET
    # The newest opset both the exporter and the onnx package know (torch keeps its bound in a
    # private module; 23 is torch 2.14's).
    exporter_latest = getattr(getattr(torch.onnx, "_constants", None), "ONNX_MAX_OPSET", 23)
    latest = min(int(onnx.defs.onnx_opset_version()), int(exporter_latest))
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= latest:
        raise ConfigError(
            f"opset must be an integer from {MIN_OPSET} (the exporter's own opset; GridSample "
            f"needs 16, LayerNormalization 17) to {latest} (the newest that the installed torch "
            f"and onnx both know), got {opset!r}"
        )
    return opset


def _check_weights(model: nn.Module) -> None:
    """The model's tensors must be real float32 ones: the check runs in float32."""
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_meta for t in tensors):
        raise ConfigError("the model is on the meta device (no weights); load or "
                          "initialise its weights before exporting")
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors
                     if t.is_floating_point() and t.dtype != torch.float32})
    if dtypes:
        raise ConfigError(
            f"export_onnx writes float32 graphs and the model has {', '.join(dtypes)} weights; "
            f"export model.float()"
        )


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the block; every submodule gets its own mode back afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _dynamic_shapes(
    plan: _Plan, dynamic_batch: bool, dynamic_size: bool
) -> tuple[dict[int, Any]] | None:
    """torch.export's ``dynamic_shapes`` of the one input, or None for a static graph."""
    axes: dict[int, Any] = {}
    if dynamic_batch:
        axes[0] = torch.export.Dim("batch")
    if dynamic_size:
        if plan.side_multiple > 1:
            # The sides are declared as multiples, as the attention-pooling head needs them.
            m = plan.side_multiple
            axes[2] = m * torch.export.Dim("height_blocks", min=max(1, _MIN_DYNAMIC_SIDE // m))
            axes[3] = m * torch.export.Dim("width_blocks", min=max(1, _MIN_DYNAMIC_SIDE // m))
        else:
            axes[2] = torch.export.Dim("height", min=_MIN_DYNAMIC_SIDE)
            axes[3] = torch.export.Dim("width", min=_MIN_DYNAMIC_SIDE)
    return (axes,) if axes else None


def _trace_shape(
    shape: tuple[int, int, int, int], dynamic_batch: bool, dynamic_size: bool
) -> tuple[int, int, int, int]:
    """Shape of the example the exporter traces.

    A dynamic axis is traced at another size than the check input has, so that the check in
    onnxruntime proves the axis really is dynamic; the traced sizes also avoid 0 and 1, which
    torch.export specialises instead of keeping symbolic.
    """
    n, c, h, w = shape
    if dynamic_batch:
        n += 1
    if dynamic_size:
        # 32 keeps a multiple of 32 one (the attention-pooling head needs that).
        h, w = (max(side + 32, _MIN_TRACE_SIDE) for side in (h, w))
    return n, c, h, w


def _as_outputs(outputs: Any) -> tuple[torch.Tensor, ...]:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def _run_torch(module: _Images, images: torch.Tensor, shape: tuple[int, ...]) -> list[Any]:
    """The model's outputs as numpy arrays; the model's own refusals become ConfigErrors."""
    try:
        outputs = _as_outputs(module(images))
    except ValueError as error:
        raise ConfigError(f"the model does not take input_shape {shape}: {error}") from error
    return [t.detach().float().cpu().numpy() for t in outputs]


def _export_program(
    module: _Images,
    example: torch.Tensor,
    plan: _Plan,
    opset: int,
    dynamic_shapes: tuple[dict[int, Any]] | None,
) -> Any:
    """The ``torch.onnx.ONNXProgram`` of ``module``, traced on ``example``.

    Raises:
        ConfigError: The dynamic axes asked for do not hold for this model.
    """
    try:
        with warnings.catch_warnings():
            # The exporter's notes about its own internals (deprecations in torch.export and
            # onnxscript) say nothing about this graph.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            return torch.onnx.export(
                module, (example,), None, dynamo=True, opset_version=opset,
                input_names=[_INPUT_NAME], output_names=list(plan.output_names),
                dynamic_shapes=dynamic_shapes, verbose=False, optimize=True,
            )
    except torch.onnx.OnnxExporterError as error:
        reason = _constraint_violation(error)
        if dynamic_shapes is None or reason is None:
            raise
        raise ConfigError(
            f"the model's input sizes cannot all be dynamic in ONNX: torch.export found "
            f"{reason}; export with a fixed image size (dynamic_size=False) or a fixed batch "
            f"(dynamic_batch=False)"
        ) from error


def _constraint_violation(error: BaseException) -> str | None:
    """First line of a torch.export shape-constraint failure among the causes, else None."""
    try:  # torch's own modules, private: without them no failure is recognised as one
        from torch._dynamo.exc import UserError as ExportUserError
        from torch.fx.experimental.symbolic_shapes import ConstraintViolationError
    except ImportError:
        return None
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        kind = getattr(getattr(cause, "error_type", None), "name", None)
        if isinstance(cause, ConstraintViolationError) or (
            isinstance(cause, ExportUserError) and kind in ("CONSTRAINT_VIOLATION", "DYNAMIC_DIM")
        ):
            lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
            return lines[0] if lines else type(cause).__name__
        cause = cause.__cause__ or cause.__context__
    return None


def _nonstandard_nodes(graph: Any) -> list[str]:
    """``domain::op`` of every node outside the default ONNX domain, subgraphs included."""
    found = []
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            found.append(f"{node.domain}::{node.op_type}")
        for attribute in node.attribute:
            for subgraph in [attribute.g, *attribute.graphs]:
                if subgraph is not None and len(subgraph.node):
                    found.extend(_nonstandard_nodes(subgraph))
    return found


def _symbolic_axes(values: Sequence[Any]) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for value in values:
        dims = value.type.tensor_type.shape.dim
        symbolic = {i: d.dim_param for i, d in enumerate(dims) if d.dim_param}
        if symbolic:
            axes[value.name] = symbolic
    return axes


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _stage_directory(path: Path) -> Path:
    """A private folder beside ``path`` for the files before they replace the old ones.

    The exporter writes the graph itself, and for a large model a weights file named after it
    (``<file name>.data``), so the pair is written under the final names in this folder on the
    same file system and then moved into place with ``os.replace`` (atomic), which
    :func:`internimage.files.atomic_write_bytes` (one file of bytes) cannot do. Named
    ``.<file name>.<process id>.<random>.tmp``: a later export removes the folders whose process
    no longer exists (killed mid-export) and leaves running exports alone.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(
        tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    )


def _max_abs_error(expected: list[Any], got: list[Any], names: Sequence[str]) -> float:
    import numpy as np

    error = 0.0
    for name, want, have in zip(names, expected, got, strict=True):
        if tuple(want.shape) != tuple(have.shape):
            raise RuntimeError(
                f"ONNX output {name!r} has shape {tuple(have.shape)}, PyTorch's "
                f"{tuple(want.shape)}: the exported graph is wrong"
            )
        difference = np.abs(want.astype(np.float64) - have.astype(np.float64))
        # A NaN anywhere is a disagreement, whatever max() makes of it.
        error = max(error, float("inf") if np.isnan(difference).any() else float(difference.max()))
    return error


def _traced_note(shape: tuple[int, ...], traced: tuple[int, ...]) -> str:
    """Where the check input differs from the traced example, the hint that a dynamic axis does
    not hold."""
    if shape == traced:
        return ""
    return (f" (the graph was traced at {traced}: its dynamic axes do not hold for this model; "
            f"export with fixed sizes)")


def _check_graph(onnx: Any, staged: Path, opset: int) -> Any:
    """The written graph (without its weights) after onnx's checker, the domain and opset checks.

    Raises:
        RuntimeError: The checker's refusal, a node outside the default ONNX domain, or another
            opset than asked for.
    """
    try:
        # The checker reads a model with external data only through its path.
        onnx.checker.check_model(str(staged), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        reason = " ".join(str(error).split())
        raise RuntimeError(f"the exported graph fails onnx's checker: {reason}") from error
    graph_model = onnx.load(str(staged), load_external_data=False)
    foreign = _nonstandard_nodes(graph_model.graph)
    if foreign:
        raise RuntimeError(
            f"the exported graph has nodes outside the standard ONNX domain "
            f"({', '.join(sorted(set(foreign)))}); it would not run in a plain ONNX runtime"
        )
    written = next((entry.version for entry in graph_model.opset_import
                    if entry.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise RuntimeError(f"the exported graph has opset {written}, asked for {opset}")
    return graph_model


def _compare(
    onnxruntime: Any,
    staged: Path,
    check_input: torch.Tensor,
    expected: list[Any],
    plan: _Plan,
    traced: tuple[int, ...],
) -> tuple[str, float]:
    """``(input name, max abs error)`` of the graph in onnxruntime against PyTorch's outputs.

    Raises:
        RuntimeError: onnxruntime cannot load or run the graph on the check input.
    """
    shape = tuple(check_input.shape)
    try:
        session = onnxruntime.InferenceSession(str(staged), providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        got = session.run(None, {input_name: check_input.numpy()})
    except Exception as error:  # onnxruntime raises its own exception types, not exported
        reason = " ".join(str(error).split())
        raise RuntimeError(
            f"the exported graph fails in onnxruntime on an input of shape {shape}"
            f"{_traced_note(shape, traced)}: {reason}"
        ) from error
    return input_name, _max_abs_error(expected, got, plan.output_names)


def _remove_stale_stages(path: Path) -> None:
    """Delete the staging folders of ``path`` that killed exports left (see _stage_directory)."""
    if not path.parent.is_dir():
        return
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")
    for entry in path.parent.iterdir():
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not process_alive(int(match["pid"])):
            shutil.rmtree(entry, ignore_errors=True)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    input_shape: Sequence[int],
    dynamic_batch: bool = True,
    dynamic_size: bool = False,
    opset: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> OnnxExportReport:
    """Write ``model`` as an ONNX graph of standard operators, checked against PyTorch.

    The DCNv3 operator is traced through its pure-PyTorch reference (ONNX ``GridSample``), so the
    graph has no custom-domain node and runs in any ONNX runtime. Before the file replaces
    ``path`` (atomically: it is written beside it first), it must pass ``onnx.checker`` with its
    shape inference, hold only default-domain nodes, and give the same outputs in onnxruntime
    (CPU) as the model in PyTorch on a seeded random input of ``input_shape``, to ``tolerance``
    in float32. A graph that fails any of these is not written.

    The model is exported in eval mode; the mode of each submodule is restored afterwards. The
    weights must be float32 (any device; the check runs onnxruntime on the CPU).

    Supported models and their outputs: an :class:`~internimage.InternImage` classifier
    (``logits``, or ``features`` without a classifier), an
    :class:`~internimage.InternImageFeatures` backbone (``stage<i>`` per ``out_indices``), the
    segmentation model (transformers' ``UperNetForSemanticSegmentation`` over InternImage:
    ``logits`` at the input size), InternImage's transformers classifier (``logits``) and backbone
    (``stage<i>``), and a detector's ``InternImageFPN`` (``p2``..``p6``). The input is
    ``images``, ``[N, 3, H, W]`` float32, normalised as the model expects.

    Args:
        model: The model to export.
        path: The ``.onnx`` file to write (replaced if it exists; folders are created).
        input_shape: ``(N, 3, H, W)`` of the check input; the traced size unless dynamic.
        dynamic_batch: Make the batch axis symbolic (``batch``).
        dynamic_size: Make the image sides symbolic too (``height``, ``width``, at least 32;
            multiples of 32 for the attention-pooling H and G classifiers). The segmentation
            model is refused (its pyramid pooling is exported for the traced size), as is any
            model whose code ties the sizes to the traced ones, with a ConfigError that says why.
            Dynamic axes are traced at other sizes than ``input_shape``, so the check proves
            them.
        opset: ONNX opset, from :data:`MIN_OPSET`; None: :data:`DEFAULT_OPSET` (18).
        tolerance: Largest accepted absolute difference between onnxruntime and PyTorch.

    Returns:
        An :class:`OnnxExportReport`: path, opset, input and output names, dynamic axes as
        written, the measured error.

    Raises:
        MissingDependencyError: onnx, onnxruntime or onnxscript is not installed.
        TypeError: Not a supported model.
        ConfigError: A detector (Mask R-CNN post-processing has no plain ONNX graph), a bad
            ``input_shape``, ``opset`` or ``path``, non-float32 or meta weights, an input the
            model refuses, or dynamic axes that cannot hold (a dynamic size for segmentation).
        RuntimeError: The exported graph fails a check: onnx's checker, a non-standard node,
            onnxruntime cannot run it, or its outputs differ (the message has the measured
            error). Nothing is written then.
    """
    start = time.perf_counter()
    onnx, onnxruntime = require_onnx()
    plan = _plan(model)
    shape = _check_input_shape(input_shape)
    opset = _check_opset(opset, onnx)
    if not tolerance >= 0:
        raise ConfigError(f"tolerance must be >= 0, got {tolerance!r}")
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give the path of the .onnx file to write")
    if dynamic_size and plan.fixed_size is not None:
        raise ConfigError(
            f"the image size of this model cannot be dynamic in ONNX: {plan.fixed_size}; export "
            f"it at a fixed size (dynamic_size=False), once per size needed"
        )
    if dynamic_size and plan.side_multiple > 1 and (shape[2] % 32 or shape[3] % 32):
        raise ConfigError(
            f"the attention-pooling head needs image sides that are multiples of 32, got "
            f"{shape[2]}x{shape[3]}"
        )
    _check_weights(model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    generator = torch.Generator().manual_seed(_CHECK_SEED)
    check_input = torch.randn(shape, generator=generator)
    example = torch.randn(_trace_shape(shape, dynamic_batch, dynamic_size),
                          generator=generator)
    with _eval_mode(plan.module), use_backend("reference"), torch.no_grad():
        expected = _run_torch(plan.module, check_input.to(device), shape)
        if len(expected) != len(plan.output_names):
            raise RuntimeError(
                f"the model gave {len(expected)} outputs, expected {len(plan.output_names)}"
            )
        program = _export_program(
            plan.module, example.to(device), plan, opset,
            _dynamic_shapes(plan, dynamic_batch, dynamic_size),
        )
    _remove_stale_stages(path)
    stage = _stage_directory(path)
    try:
        staged = stage / path.name
        program.save(staged)
        del program
        staged_data = stage / f"{path.name}.data"
        has_data = staged_data.exists()
        graph_model = _check_graph(onnx, staged, opset)
        input_name, error = _compare(onnxruntime, staged, check_input, expected, plan,
                                     tuple(example.shape))
        if not error <= tolerance:
            raise RuntimeError(
                f"the ONNX graph disagrees with PyTorch: max abs error {error:.3g} > "
                f"{tolerance:g} on a random input of shape {shape}"
                f"{_traced_note(shape, tuple(example.shape))}; the file was not written"
            )
        for file in (staged_data, staged) if has_data else (staged,):
            _fsync(file)
        # The weights first: the new graph names them, the old one (if any) is still in place.
        target_data = path.with_name(f"{path.name}.data")
        if has_data:
            os.replace(staged_data, target_data)
        os.replace(staged, path)
        if not has_data and target_data.is_file():
            target_data.unlink()  # the weights of an earlier, larger graph at this path
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return OnnxExportReport(
        path=path,
        opset=opset,
        input_name=input_name,
        output_names=tuple(o.name for o in graph_model.graph.output),
        input_shape=shape,
        dynamic_axes={
            **_symbolic_axes(graph_model.graph.input),
            **_symbolic_axes(graph_model.graph.output),
        },
        max_abs_error=error,
        external_data=target_data if has_data else None,
        seconds=time.perf_counter() - start,
    )

