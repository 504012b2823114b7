"""Fig. 4 of the InternImage paper: parameters and training memory with shared and unshared
DCNv3 weights.

DCNv2 gives every sampling point its own ``C x C`` projection; DCNv3 shares one projection among
the points (the ablation ``dcn_weights="unshared"`` of :class:`internimage.InternImageConfig`).
For each variant this script counts the parameters of both (models built on the meta device, so
every variant up to H is counted in seconds; the difference is ``(P-1) * C_i^2`` per block of
stage i, P = 9), their MACs by :func:`internimage.count_macs`, and, for the variants in
``--memory-variants``, the peak memory of one training step (forward, cross-entropy, backward; no
optimizer) on the CPU.

Memory is measured as the peak resident set size of a fresh process: one process builds the
model and runs a warm-up step on a 32-px image (numba compilation, allocator, libraries), a second
does the same and then the measured step; the difference of their peaks is the step's memory
(activations, gradients and temporaries, minus the small warm-up step's). The shared model runs
with ``--shared-backend`` (default: the automatic choice, numba on the CPU, whose kernel fuses the
sum over points); the unshared one always samples each point with the pure-PyTorch path (no fused
kernel can express per-point weights), which holds the ``P`` sampled values of every pixel. The
paper measured GPU memory with its CUDA operator, so the numbers differ in scale.

Usage::

    python benchmarks/ablation_fig4.py                      # T..H counted, T, S and B measured
    python benchmarks/ablation_fig4.py --memory-variants t,s,b --batch 2 --image-size 224

Writes ``ablation_fig4.json``, ``.md`` and ``.png`` under ``--output-dir`` (default
``benchmarks/results/``) with the machine, library versions, date and command.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from bench_common import library_versions, machine_info, write_results
from internimage.draw import figure_png
from internimage.files import atomic_write_bytes
from internimage.models import VARIANTS, count_macs
from internimage.models.internimage import InternImage

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_VARIANTS = ("t", "s", "b", "l", "xl", "h")
DEFAULT_MEMORY_VARIANTS = ("t", "s", "b")
WEIGHTS = ("shared", "unshared")
# Side and batch of the warm-up step that both measuring processes run (batch 2: the conv head's
# BatchNorm needs more than one value per channel in training mode).
WARMUP_SIDE = 32
WARMUP_BATCH = 2


def variant_name(name: str) -> str:
    """``"t"`` or ``"internimage_t"`` -> ``"internimage_t"``.

    Raises:
        ValueError: Not a registered variant.
    """
    full = name if name.startswith("internimage_") else f"internimage_{name.lower()}"
    if full not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; available: {', '.join(VARIANTS)}")
    return full


def _names(text: str) -> list[str]:
    return [variant_name(part.strip()) for part in text.split(",") if part.strip()]


def build(name: str, weights: str, *, meta: bool) -> InternImage:
    """The variant with ``dcn_weights=weights`` (1000 classes), on the meta device if asked."""
    config = VARIANTS[name].config.replace(dcn_weights=weights)
    if meta:
        with torch.device("meta"):
            return InternImage(config)
    return InternImage(config)


def expected_delta(name: str) -> int:
    """Extra parameters of unshared weights: ``(P-1) * C_i^2`` per block of stage i."""
    config = VARIANTS[name].config
    points = 9 - int(config.remove_center)
    return sum(
        depth * (points - 1) * width * width
        for depth, width in zip(config.depths, config.stage_channels, strict=True)
    )


def count_parameters(name: str, image_size: int) -> dict[str, Any]:
    """Parameters (and MACs at ``image_size``) of the variant with shared and unshared weights."""
    row: dict[str, Any] = {"variant": name}
    for weights in WEIGHTS:
        model = build(name, weights, meta=True)
        row[f"params_{weights}"] = sum(p.numel() for p in model.parameters())
        row[f"macs_{weights}"] = count_macs(model, (1, 3, image_size, image_size))
    row["params_delta"] = row["params_unshared"] - row["params_shared"]
    row["params_delta_formula"] = expected_delta(name)
    row["params_ratio"] = row["params_unshared"] / row["params_shared"]
    return row


def _train_step(model: InternImage, batch: int, side: int) -> None:
    images = torch.randn(batch, 3, side, side)
    labels = torch.zeros(batch, dtype=torch.long)
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    model.zero_grad(set_to_none=True)


def child(name: str, weights: str, measure: bool, batch: int, side: int, backend: str) -> None:
    """In a fresh process: build, warm up, optionally run the measured step; print JSON."""
    from internimage.ops import use_backend
    from internimage.ops.backends import resolve_backend

    torch.manual_seed(0)
    model = build(name, weights, meta=False).train()
    seconds = None
    with use_backend(backend):
        # What the fused operator would run on (the unshared model never calls it).
        resolved = resolve_backend(torch.device("cpu"))
        _train_step(model, WARMUP_BATCH, WARMUP_SIDE)
        if measure:
            started = time.perf_counter()
            _train_step(model, batch, side)
            seconds = time.perf_counter() - started
    # ru_maxrss is in KiB on Linux: the peak resident set size of this process.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"maxrss_bytes": peak, "step_s": seconds, "backend": resolved}))


def _run_child(
    name: str, weights: str, measure: bool, batch: int, side: int, backend: str
) -> dict[str, Any]:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--child", name, weights,
        "step" if measure else "baseline", "--batch", str(batch), "--image-size", str(side),
        "--shared-backend", backend,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(
            f"measuring {name} ({weights}) failed with exit status {done.returncode}:\n"
            f"{done.stderr[-4000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_memory(name: str, batch: int, side: int, shared_backend: str) -> dict[str, Any]:
    """Peak training-step memory of the variant with shared and unshared weights."""
    row: dict[str, Any] = {"variant": name, "batch": batch, "image_size": side}
    for weights in WEIGHTS:
        backend = shared_backend if weights == "shared" else "reference"
        baseline = _run_child(name, weights, False, batch, side, backend)
        step = _run_child(name, weights, True, batch, side, backend)
        # The unshared model samples with pure PyTorch whatever the backend.
        row[f"backend_{weights}"] = step["backend"] if weights == "shared" else "pure torch"
        row[f"baseline_maxrss_bytes_{weights}"] = baseline["maxrss_bytes"]
        row[f"step_maxrss_bytes_{weights}"] = step["maxrss_bytes"]
        row[f"memory_bytes_{weights}"] = step["maxrss_bytes"] - baseline["maxrss_bytes"]
        row[f"step_s_{weights}"] = round(step["step_s"], 2)
    row["memory_ratio"] = row["memory_bytes_unshared"] / max(row["memory_bytes_shared"], 1)
    return row


def _short(name: str) -> str:
    return name.removeprefix("internimage_").upper()


def plot(params: list[dict[str, Any]], memory: list[dict[str, Any]]) -> bytes:
    """Two panels like the paper's Fig. 4: parameters (M) and memory (GB) per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"shared": "#1f77b4", "unshared": "#d62728"}
    labels = {"shared": "shared weights (DCNv3)", "unshared": "unshared weights (DCNv2-style)"}
    for axis, rows, key, scale, unit in (
        (left, params, "params_{}", 1e6, "parameters (M)"),
        (right, memory, "memory_bytes_{}", 1e9, "training-step memory (GB)"),
    ):
        if not rows:
            axis.text(0.5, 0.5, "not measured", ha="center", va="center", transform=axis.transAxes)
            axis.set_axis_off()
            continue
        positions = range(len(rows))
        for offset, weights in ((-0.2, "shared"), (0.2, "unshared")):
            values = [row[key.format(weights)] / scale for row in rows]
            bars = axis.bar(
                [p + offset for p in positions], values, width=0.4, color=colors[weights],
                label=labels[weights],
            )
            axis.bar_label(bars, fmt="%.1f" if scale == 1e6 else "%.2f", fontsize=7)
        axis.set_xticks(list(positions), [_short(row["variant"]) for row in rows])
        axis.set_ylabel(unit)
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=8)
    left.set_title("Parameters")
    if memory:
        first = memory[0]
        right.set_title(
            f"Memory, CPU, batch {first['batch']}, {first['image_size']} px, forward + backward"
        )
    fig.suptitle("Shared vs unshared DCNv3 projection weights (paper Fig. 4)")
    fig.tight_layout()
    return figure_png(fig, dpi=120)


def markdown(record: dict[str, Any]) -> list[str]:
    """The results' tables and notes."""
    s = record["settings"]
    md = [
        "# Fig. 4 ablation: shared vs unshared DCNv3 weights",
        "",
        f"- date (UTC): {record['date_utc']}",
        "- parameters: 1000 classes, models built on the meta device; MACs by "
        f"`internimage.count_macs` at {s['image_size']} px (one image)",
        "",
        "| variant | params shared (M) | params unshared (M) | ratio | delta = sum (P-1) C^2 "
        "| GMACs shared | GMACs unshared |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in record["params"]:
        md.append(
            f"| {_short(row['variant'])} | {row['params_shared'] / 1e6:.2f} | "
            f"{row['params_unshared'] / 1e6:.2f} | {row['params_ratio']:.2f}x | "
            f"{row['params_delta'] / 1e6:.2f}M"
            f"{'' if row['params_delta'] == row['params_delta_formula'] else ' (MISMATCH)'} | "
            f"{row['macs_shared'] / 1e9:.2f} | {row['macs_unshared'] / 1e9:.2f} |"
        )
    md.append("")
    if record["memory"]:
        md += [
            f"Training-step peak memory on the CPU (batch {s['batch']}, {s['image_size']} px, "
            "forward + cross-entropy + backward; peak RSS of the step's process minus that of a "
            f"process that stops after the warm-up step, batch {WARMUP_BATCH} at {WARMUP_SIDE} "
            "px):",
            "",
            "| variant | shared (GB) | unshared (GB) | ratio | shared backend |",
            "|---|---|---|---|---|",
        ]
        for row in record["memory"]:
            md.append(
                f"| {_short(row['variant'])} | {row['memory_bytes_shared'] / 1e9:.2f} | "
                f"{row['memory_bytes_unshared'] / 1e9:.2f} | {row['memory_ratio']:.2f}x | "
                f"{row['backend_shared']} |"
            )
        md += [
            "",
            "The unshared model always samples with the pure-PyTorch path (grid_sample): the "
            "fused numba/Triton kernels sum over the points and cannot apply a matrix per point. "
            "The paper's numbers are GPU memory with the CUDA operator. The JSON also has each "
            "step's time; it measures one step in a fresh process and is only as steady as the "
            "machine's load, so it is not a speed comparison.",
            "",
        ]
    md += [f"![Fig. 4]({record['plot']})", ""]
    return md


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants", default=",".join(DEFAULT_VARIANTS),
        help="comma-separated variants to count (t, s, b, l, xl, h, g or full names)",
    )
    parser.add_argument(
        "--memory-variants", default=",".join(DEFAULT_MEMORY_VARIANTS),
        help="comma-separated variants whose training-step memory is measured ('' for none)",
    )
    parser.add_argument("--batch", type=int, default=2, help="batch of the measured step")
    parser.add_argument("--image-size", type=int, default=224, help="image side in pixels")
    parser.add_argument(
        "--shared-backend", default="auto", help="DCNv3 backend of the shared models' step"
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--child", nargs=3, metavar=("VARIANT", "WEIGHTS", "MODE"), help=argparse.SUPPRESS
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write the result files and return the record."""
    args = parse_args(argv)
    if args.child:
        name, weights, mode = args.child
        child(name, weights, mode == "step", args.batch, args.image_size, args.shared_backend)
        return {}
    variants, memory_variants = _names(args.variants), _names(args.memory_variants)
    stamp = datetime.now(timezone.utc)
    shown = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "benchmarks/ablation_fig4.py", *shown])
    output_dir: Path = args.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "benchmark": "InternImage Fig. 4: shared vs unshared DCNv3 weights",
        "date_utc": stamp.isoformat(timespec="seconds"),
        "machine": machine_info(torch.device("cpu")),
        "versions": library_versions("numpy", "numba", "matplotlib"),
        "command": command,
        "settings": {"batch": args.batch, "image_size": args.image_size,
                     "shared_backend": args.shared_backend, "warmup_side": WARMUP_SIDE,
                     "warmup_batch": WARMUP_BATCH},
        "params": [count_parameters(name, args.image_size) for name in variants],
        "memory": [
            measure_memory(name, args.batch, args.image_size, args.shared_backend)
            for name in memory_variants
        ],
        "plot": "ablation_fig4.png",
    }
    atomic_write_bytes(output_dir / record["plot"], plot(record["params"], record["memory"]))
    write_results(output_dir, "ablation_fig4", record, markdown(record), command)
    return record


if __name__ == "__main__":
    main()
