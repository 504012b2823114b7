"""Throughput of the DCNv3 operator and of whole models on this machine, by inference path.

A path is how the forward pass runs:

- ``eager``: the module as it is, in ``torch.inference_mode``;
- ``compile``: ``torch.compile`` of the whole model (``fullgraph=True``: InternImage has no graph
  break, the DCNv3 operator is a registered op with a fake implementation);
- ``onnxruntime``: the graph of :func:`internimage.export.export_onnx` (standard operators only,
  DCNv3 as GridSample) in an onnxruntime session with as many threads as torch uses.

Each measurement runs in a dtype (``float32``, or ``bfloat16`` with the weights converted: on CPUs
with native bfloat16 arithmetic, AVX-512 BF16 or AMX, oneDNN's matmuls and convolutions run at a
multiple of the float32 rate) and, for the PyTorch paths, with a DCNv3 backend (``numba``,
``triton``, ``reference``). Its output is compared with the float32 eager output on the same
input, so a fast path that loses accuracy shows it in the same table.

The achieved rate is stated against the measured float32 matmul rate of the machine (``2 * MACs``
of the model per image over the time, divided by the GFLOP/s of a 2048^3 matmul), the yardstick
of ``benchmarks/``.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from internimage.errors import ConfigError, MissingDependencyError

__all__ = [
    "DTYPES",
    "PATHS",
    "Measurement",
    "bfloat16_is_native",
    "benchmark_model",
    "benchmark_operator",
    "format_table",
    "matmul_gflops",
]

#: Inference paths, in the order they are measured.
PATHS = ("eager", "compile", "onnxruntime")
#: Dtype names accepted by the benchmark functions.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Measurement:
    """One timed configuration.

    Attributes:
        target: What ran: a model name or ``"dcnv3"`` (the operator alone).
        path: ``eager``, ``compile`` or ``onnxruntime``.
        dtype: ``float32`` or ``bfloat16``.
        backend: DCNv3 backend of the PyTorch paths; ``"-"`` for onnxruntime (its graph samples
            with GridSample).
        batch: Images per call.
        image_size: Side of the square input (the operator: of its feature map).
        seconds: Time of each timed call.
        setup_s: Time to prepare the path (compilation, export, session) and warm it up.
        gflop_per_call: Model cost per call (``2 * MACs``), when known.
        peak_gflops: The float32 matmul rate the share is stated against, when measured (by
            :func:`benchmark_model`, right after this configuration's timed calls).
        error_vs_float32: Largest absolute difference from the float32 eager output, divided by
            the largest absolute value of that output (0 for the float32 eager run itself).
        skipped: Why the configuration did not run (``None`` when it did).
    """

    target: str
    path: str
    dtype: str
    backend: str
    batch: int
    image_size: int
    seconds: tuple[float, ...] = ()
    setup_s: float = 0.0
    gflop_per_call: float | None = None
    peak_gflops: float | None = None
    error_vs_float32: float | None = None
    skipped: str | None = None

    @property
    def best_s(self) -> float | None:
        """The fastest timed call (the least disturbed by other work on the machine)."""
        return min(self.seconds) if self.seconds else None

    @property
    def images_per_s(self) -> float | None:
        """Images (operator: calls times batch) per second of the fastest call."""
        best = self.best_s
        return None if best is None else self.batch / best

    @property
    def gflops(self) -> float | None:
        """Achieved GFLOP/s of the fastest call."""
        best = self.best_s
        if best is None or self.gflop_per_call is None:
            return None
        return self.gflop_per_call / best

    @property
    def peak_share(self) -> float | None:
        """Achieved rate as a fraction of the float32 matmul rate."""
        rate = self.gflops
        if rate is None or not self.peak_gflops:
            return None
        return rate / self.peak_gflops

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON, derived rates included."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["seconds"] = list(self.seconds)
        out.update(best_s=self.best_s, images_per_s=self.images_per_s, gflops=self.gflops,
                   peak_share=self.peak_share)
        return out


@dataclass
class _Timer:
    """Warm-up then timed calls of one prepared function."""

    warmup: int
    repeats: int
    device: torch.device

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, fn: Callable[[], Any]) -> tuple[float, ...]:
        for _ in range(self.warmup):
            fn()
        self._sync()
        times = []
        for _ in range(self.repeats):
            start = time.perf_counter()
            fn()
            self._sync()
            times.append(time.perf_counter() - start)
        return tuple(times)


def matmul_gflops(
    dtype: torch.dtype = torch.float32, *, size: int = 2048, repeats: int = 5,
    device: str | torch.device = "cpu",
) -> float:
    """Measured rate of a square matmul, in GFLOP/s (the median of ``repeats`` after a warm-up).

    Args:
        dtype: Operand dtype.
        size: Side of the matrices.
        repeats: Timed products.
        device: Where to multiply.
    """
    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    times = _Timer(1, repeats, device).run(lambda: a @ b)
    return 2 * size**3 / statistics.median(times) / 1e9


def bfloat16_is_native(device: str | torch.device = "cpu") -> bool:
    """Whether bfloat16 arithmetic is native here (CPU: AVX-512 BF16 or AMX, as oneDNN reports;
    CUDA: compute capability 8.0 or newer). Elsewhere bfloat16 is emulated and slower than
    float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def _check_choices(values: Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    values = list(values)
    if not values:
        raise ConfigError(f"bench: choose at least one {what} ({', '.join(allowed)})")
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ConfigError(f"bench: unknown {what} {', '.join(unknown)}; choose from "
                          f"{', '.join(allowed)}")
    return values


def _flat_output(output: Any) -> torch.Tensor:
    """One float32 vector of everything a forward pass returned (tensor, list, ``.logits``)."""
    if isinstance(output, torch.Tensor):
        return output.detach().float().reshape(-1)
    if hasattr(output, "logits"):
        return _flat_output(output.logits)
    if isinstance(output, (list, tuple)):
        return torch.cat([_flat_output(item) for item in output])
    if isinstance(output, dict):
        return torch.cat([_flat_output(item) for item in output.values()])
    raise TypeError(f"bench: cannot compare an output of type {type(output).__name__}")


def _relative_error(output: Any, reference: torch.Tensor) -> float:
    values = _flat_output(output)
    scale = reference.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
    return float((values - reference).abs().max() / scale)


def _onnxruntime_runner(
    model: nn.Module, example: torch.Tensor, workdir: Path
) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """Export ``model`` (float32) and open an onnxruntime session on it.

    Returns:
        ``(run, output)``: a call on ``example``, and a call whose result is comparable with the
        PyTorch output (the list of output arrays as tensors).
    """
    try:
        import onnxruntime
    except ImportError as error:
        raise MissingDependencyError(
            "the onnxruntime path needs onnx and onnxruntime: pip install 'internimage[onnx]'"
        ) from error
    from internimage.export import export_onnx

    path = workdir / "model.onnx"
    export_onnx(model, path, input_shape=tuple(example.shape))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"]
    )
    feed = {session.get_inputs()[0].name: example.numpy()}

    def run() -> Any:
        return session.run(None, feed)

    def output() -> Any:
        return [torch.from_numpy(array) for array in run()]

    return run, output


def _torch_runner(
    model: nn.Module, example: torch.Tensor, path: str, backend: str
) -> Callable[[], Any]:
    from internimage.ops import use_backend

    forward: Callable[[torch.Tensor], Any] = model
    if path == "compile":
        # One graph for the whole model; shapes are fixed in a benchmark.
        forward = torch.compile(model, fullgraph=True, dynamic=False)

    def run() -> Any:
        with use_backend(backend), torch.inference_mode():
            return forward(example)

    return run


def _skip_reason(
    path: str, dtype: str, backend: str, device: torch.device, exportable: bool
) -> str | None:
    from internimage.ops import use_backend
    from internimage.ops.backends import resolve_backend

    if path == "onnxruntime" and not exportable:
        return "onnxruntime runs exported models, not the operator alone"
    if path == "onnxruntime" and dtype != "float32":
        return "onnxruntime runs the float32 graph"
    if path == "onnxruntime" and device.type != "cpu":
        return "onnxruntime is measured on the CPU"
    if backend != "-":
        try:
            # The operator's own rule for which backend runs on which device.
            with use_backend(backend):
                resolve_backend(device)
        except RuntimeError as error:
            return str(error)
    if dtype == "bfloat16" and not bfloat16_is_native(device):
        return f"bfloat16 is not native on this {device.type} (it would be emulated)"
    return None


def _measure_paths(
    target: str,
    model: nn.Module,
    make_input: Callable[[int], torch.Tensor],
    *,
    paths: Sequence[str],
    dtypes: Sequence[str],
    backends: Sequence[str],
    batches: Sequence[int],
    image_size: int,
    device: torch.device,
    gflop_per_image: float | None,
    peak: float | None,
    measure_peak: bool,
    warmup: int,
    repeats: int,
    progress: Progress | None,
) -> list[Measurement]:
    """Every (batch, path, dtype, backend) combination of one model, in a stable order."""
    from internimage.errors import UserError

    combos = list(dict.fromkeys(  # onnxruntime once per batch and dtype, whatever the backends
        (batch, path, dtype, backend if path != "onnxruntime" else "-")
        for batch in batches for path in paths for dtype in dtypes for backend in backends
    ))
    results: list[Measurement] = []
    model = model.eval().to(device)
    converted: dict[str, nn.Module] = {"float32": model}
    with tempfile.TemporaryDirectory(prefix="internimage-bench-") as tmp:
        for index, (batch, path, dtype, backend) in enumerate(combos, 1):
            if progress is not None:
                progress(f"[{index}/{len(combos)}] {target} {path} {dtype} backend {backend} "
                         f"batch {batch}")
            base = dict(target=target, path=path, dtype=dtype, backend=backend, batch=batch,
                        image_size=image_size, peak_gflops=peak,
                        gflop_per_call=None if gflop_per_image is None
                        else gflop_per_image * batch)
            skip = _skip_reason(path, dtype, backend, device,
                                exportable=not isinstance(model, _OperatorCall))
            if skip is not None:
                results.append(Measurement(**base, skipped=skip))
                continue
            example = make_input(batch).to(device)
            with torch.inference_mode():
                reference = _flat_output(model(example))
            start = time.perf_counter()
            try:
                if path == "onnxruntime":
                    run, output = _onnxruntime_runner(model, example.cpu(), Path(tmp))
                else:
                    if dtype not in converted:
                        converted[dtype] = copy.deepcopy(model).to(DTYPES[dtype])
                    run = output = _torch_runner(
                        converted[dtype], example.to(DTYPES[dtype]), path, backend
                    )
            except UserError as error:  # e.g. a model the exporter refuses: say so in the table
                results.append(Measurement(**base, skipped=str(error)))
                continue
            # The first call compiles (compile path) or warms caches: part of the setup time.
            error_vs_float32 = _relative_error(output(), reference)
            timer = _Timer(warmup, repeats, device)
            setup = time.perf_counter() - start
            seconds = timer.run(run)
            if measure_peak:
                # The machine's speed drifts over a long run: each share is taken against a
                # matmul timed next to it, not one from the start.
                base["peak_gflops"] = matmul_gflops(device=device, repeats=3)
            results.append(Measurement(**base, seconds=seconds, setup_s=setup,
                                       error_vs_float32=error_vs_float32))
    return results


def benchmark_model(
    model: str | nn.Module,
    *,
    paths: Sequence[str] = ("eager",),
    dtypes: Sequence[str] = ("float32",),
    backends: Sequence[str] | None = None,
    batches: Sequence[int] = (1, 8),
    image_size: int = 224,
    device: str | torch.device = "cpu",
    warmup: int = 1,
    repeats: int = 3,
    peak_gflops: float | None = None,
    progress: Progress | None = None,
) -> list[Measurement]:
    """Inference throughput of a model on random images, for each path, dtype and backend.

    Args:
        model: A registered model name (built with random weights: speed does not depend on
            them) or a module taking ``[N, 3, S, S]``.
        paths: Subset of :data:`PATHS`.
        dtypes: Subset of :data:`DTYPES` names.
        backends: DCNv3 backends of the PyTorch paths (default: the device's fast one).
        batches: Batch sizes.
        image_size: Input side S.
        device: Where to run (onnxruntime always runs on the CPU).
        warmup: Untimed calls before timing, after the first (compiling) call.
        repeats: Timed calls; the fastest counts.
        peak_gflops: The float32 matmul rate to state shares against (default on the CPU: a
            2048^3 matmul timed right after each configuration).
        progress: Called with a line before each configuration.

    Returns:
        One :class:`Measurement` per configuration, skipped ones included with their reason.
    """
    from internimage.models import count_macs, create_model
    from internimage.ops.backends import BACKENDS, resolve_backend

    device = torch.device(device)
    paths = _check_choices(paths, PATHS, "path")
    dtypes = _check_choices(dtypes, tuple(DTYPES), "dtype")
    backends = ([resolve_backend(device)] if backends is None
                else _check_choices(backends, BACKENDS, "backend"))
    if not batches or min(batches) < 1:
        raise ConfigError(f"bench: batch sizes must be positive, got {list(batches)}")
    if image_size < 32:
        raise ConfigError(f"bench: image_size must be at least 32, got {image_size}")
    name = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        torch.manual_seed(0)
        model = create_model(model)
    try:
        gflop = 2 * count_macs(model, (1, 3, image_size, image_size)) / 1e9
    except (TypeError, ValueError, RuntimeError):
        gflop = None  # a module the counter does not know: rates without a share
    generator = torch.Generator().manual_seed(0)
    return _measure_paths(
        name, model,
        lambda batch: torch.randn(batch, 3, image_size, image_size, generator=generator),
        paths=paths, dtypes=dtypes, backends=backends, batches=batches, image_size=image_size,
        device=device, gflop_per_image=gflop, peak=peak_gflops,
        measure_peak=peak_gflops is None and device.type == "cpu", warmup=warmup, repeats=repeats,
        progress=progress,
    )


class _OperatorCall(nn.Module):
    """The DCNv3 or DCNv4 operator on fixed offsets and point weights, as a module of its input.

    ``offset_mask`` is DCNv4's packed tensor; DCNv3 gets ``offset`` and ``mask`` apart.
    """

    def __init__(self, operator: str, tensors: dict[str, torch.Tensor], group: int) -> None:
        super().__init__()
        for name, tensor in tensors.items():
            self.register_buffer(name, tensor)
        self.operator = operator
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from internimage.ops import dcnv3, dcnv4

        if self.operator == "dcnv4":
            return dcnv4(x, self.offset_mask, group=self.group,
                         group_channels=x.shape[-1] // self.group)  # [N, H, W, C]
        return dcnv3(x, self.offset, self.mask, group=self.group)  # [N, H, W, C]


#: Operators :func:`benchmark_operator` times.
OPERATORS = ("dcnv3", "dcnv4")


def benchmark_operator(
    *,
    channels: int = 64,
    group: int = 4,
    size: int = 56,
    batch: int = 8,
    paths: Sequence[str] = ("eager",),
    dtypes: Sequence[str] = ("float32",),
    backends: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    warmup: int = 1,
    repeats: int = 3,
    progress: Progress | None = None,
    operator: str = "dcnv3",
) -> list[Measurement]:
    """Forward throughput of the DCNv3 or DCNv4 operator alone (3 x 3 kernel, stride 1,
    padding 1).

    The defaults are the shape of InternImage-T's (and FlashInternImage-T's) first stage at
    224 px. Offsets are random (a few pixels), point weights softmax-normalised, as the DCNv3
    layer gives them (DCNv4 reads the same values from its packed tensor).

    Args:
        channels: C of the ``[N, S, S, C]`` input.
        group: Groups G (C must be divisible by it).
        size: Side S of the feature map.
        batch: N.
        paths: Subset of :data:`PATHS`.
        dtypes: Subset of :data:`DTYPES` names.
        backends: DCNv3 backends (default: the device's fast one).
        device: Where to run.
        warmup: Untimed calls before timing.
        repeats: Timed calls; the fastest counts.
        progress: Called with a line before each configuration.
        operator: One of :data:`OPERATORS`.

    Returns:
        One :class:`Measurement` per configuration (``image_size`` holds S).
    """
    from internimage.ops.backends import BACKENDS, resolve_backend
    from internimage.ops.geometry import dcnv4_columns
    from internimage.ops.packing import pack_offset_mask

    device = torch.device(device)
    paths = _check_choices(paths, PATHS, "path")
    dtypes = _check_choices(dtypes, tuple(DTYPES), "dtype")
    if operator not in OPERATORS:
        raise ConfigError(f"bench: operator must be one of {OPERATORS}, got {operator!r}")
    if min(channels, group, size, batch) < 1 or channels % group:
        raise ConfigError(f"bench: the operator needs positive sizes and channels divisible by "
                          f"group, got channels={channels}, group={group}, size={size}, "
                          f"batch={batch}")
    backends = ([resolve_backend(device)] if backends is None
                else _check_choices(backends, BACKENDS, "backend"))
    generator = torch.Generator().manual_seed(0)
    points = 9
    offset = 2 * torch.randn(batch, size, size, group * points * 2, generator=generator)
    logits = torch.randn(batch, size, size, group, points, generator=generator)
    mask = logits.softmax(-1).reshape(batch, size, size, group * points)
    if operator == "dcnv4":
        module = _OperatorCall(
            operator, {"offset_mask": pack_offset_mask(offset, mask, group, points,
                                                       dcnv4_columns(group, points))}, group)
    else:
        module = _OperatorCall(operator, {"offset": offset, "mask": mask}, group)
    return _measure_paths(
        f"{operator} C={channels} G={group}", module,
        lambda n: torch.randn(n, size, size, channels, generator=generator),
        paths=paths, dtypes=dtypes, backends=backends, batches=(batch,), image_size=size,
        device=device, gflop_per_image=None, peak=None, measure_peak=False, warmup=warmup,
        repeats=repeats,
        progress=progress,
    )


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(measurements: Sequence[Measurement]) -> str:
    """A plain-text table of measurements, one row each (skipped ones with their reason)."""
    header = ("target", "path", "dtype", "backend", "batch", "images/s", "ms/call", "GFLOP/s",
              "of fp32 peak", "err vs fp32", "setup s")
    rows = []
    for m in measurements:
        if m.skipped is not None:
            rows.append((m.target, m.path, m.dtype, m.backend, str(m.batch),
                         f"skipped: {m.skipped}", "", "", "", "", ""))
            continue
        share = m.peak_share
        rows.append((
            m.target, m.path, m.dtype, m.backend, str(m.batch), _cell(m.images_per_s, ".2f"),
            _cell(None if m.best_s is None else 1000 * m.best_s, ".1f"), _cell(m.gflops, ".1f"),
            "-" if share is None else f"{100 * share:.1f}%", _cell(m.error_vs_float32, ".1e"),
            f"{m.setup_s:.1f}",
        ))
    # A skip reason spans the numeric columns: it does not widen them.
    timed = [row for row in rows if row[6]]
    widths = [max([len(header[i]), *(len(row[i]) for row in (timed if i >= 5 else rows))])
              for i in range(len(header))]

    def join(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()

    lines = [join(header), "  ".join("-" * w for w in widths)]
    lines += [join(row) if row[6] else join(row[:5]) + "  " + row[5] for row in rows]
    peaks = sorted({m.peak_gflops for m in measurements if m.peak_gflops})
    if len(peaks) == 1:
        lines.append(f"fp32 peak: a 2048^3 float32 matmul measured at {peaks[0]:.1f} GFLOP/s")
    elif peaks:
        lines.append(f"fp32 peak: a 2048^3 float32 matmul timed after each configuration, "
                     f"{peaks[0]:.1f}-{peaks[-1]:.1f} GFLOP/s")
    return "\n".join(lines)
