"""Speed and memory of the DCNv3 operator backends on the InternImage-T stage shapes.

Usage::

    python benchmarks/bench_dcnv3.py                 # CPU: reference vs numba, all four stages
    python benchmarks/bench_dcnv3.py --shapes atto   # the same for InternImage-atto (D = 8)
    python benchmarks/bench_dcnv3.py --quick         # fewer repeats, for a smoke run
    python benchmarks/bench_dcnv3.py --device cuda   # GPU section (benchmarks/dcnv3_gpu.py)

CPU method:

* Time: median wall time of ``--repeats`` calls after warm-up, for the forward pass alone and
  for forward + backward (``out.backward(grad)`` on leaves that require gradients). Each backend
  runs in fresh subprocesses of its own (torch's and numba's OpenMP thread pools are separate and
  each spins for a while after parallel work, which would slow the other down), three processes
  per backend taking turns, so a slow spell of the machine hits both alike.
* Peak memory: each (backend, stage) forward + backward runs once in a fresh subprocess. The child
  first runs the backend on a tiny input (so compilation and thread pools are set up), then
  creates the stage's inputs, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``),
  runs forward + backward once and reports ``VmHWM - VmRSS before the call``: the extra resident
  memory of the call, outputs and gradients included. torch's CPU allocations are not visible to
  tracemalloc, which is why the operating system's counter is used.
* Roofline (forward only): ideal bytes and FLOPs from PERFORMANCE.md, with the copy bandwidth and
  the fp32 matmul rate measured in the same run.

Results go to ``benchmarks/results/dcnv3_cpu.json`` and ``dcnv3_cpu.md`` (``dcnv3_cpu_atto.*``
for ``--shapes atto``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from bench_common import cpu_model
from internimage.files import atomic_write_text

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BACKENDS = ("reference", "numba")
MODES = ("forward", "forward_backward", "forward_cpu_1thread", "forward_backward_cpu_1thread")


@dataclass(frozen=True)
class StageShape:
    """One InternImage stage at 224 px: the operator's input is [batch, size, size, channels]."""

    name: str
    size: int
    channels: int
    group: int
    batch: int = 8
    kernel_size: int = 3

    @property
    def channels_per_group(self) -> int:
        return self.channels // self.group

    @property
    def points(self) -> int:
        return self.kernel_size * self.kernel_size


STAGES = (
    StageShape("stage1", 56, 64, 4),
    StageShape("stage2", 28, 128, 8),
    StageShape("stage3", 14, 256, 16),
    StageShape("stage4", 7, 512, 32),
)
#: InternImage-atto at 224 px: 8 channels per group, as in every small variant.
ATTO_STAGES = (
    StageShape("stage1", 56, 16, 2),
    StageShape("stage2", 28, 32, 4),
    StageShape("stage3", 14, 64, 8),
    StageShape("stage4", 7, 128, 16),
)
SHAPE_SETS = {"t": STAGES, "atto": ATTO_STAGES}

# Targets of the numba backend against the reference, measured in the same run.
STAGE1_FORWARD_SPEEDUP = 20.0
STAGE1_TRAIN_SPEEDUP = 10.0
EVERY_STAGE_SPEEDUP = 5.0
MEMORY_FRACTION = 1.0 / 3.0


def make_inputs(stage: StageShape, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Input, offset (a few pixels), softmax-normalised mask and output gradient, float32."""
    generator = torch.Generator().manual_seed(seed)
    n, s, c, g, p = stage.batch, stage.size, stage.channels, stage.group, stage.points
    input = torch.randn(n, s, s, c, generator=generator)
    offset = 2.0 * torch.randn(n, s, s, g * p * 2, generator=generator)
    mask = torch.softmax(torch.randn(n, s, s, g, p, generator=generator), dim=-1)
    grad = torch.randn(n, s, s, c, generator=generator)
    return input, offset, mask.reshape(n, s, s, g * p), grad


def run_op(backend: str, stage: StageShape, input: torch.Tensor, offset: torch.Tensor,
           mask: torch.Tensor) -> torch.Tensor:
    from internimage.ops import dcnv3, use_backend

    with use_backend(backend):
        return dcnv3(input, offset, mask, kernel_size=stage.kernel_size, stride=1, pad=1,
                     dilation=1, group=stage.group)


def forward_and_backward(backend: str, stage: StageShape, tensors: tuple[torch.Tensor, ...]
                         ) -> None:
    input, offset, mask, grad = tensors
    leaves = [t.detach().requires_grad_(True) for t in (input, offset, mask)]
    run_op(backend, stage, *leaves).backward(grad)


def measure_machine(quick: bool) -> dict[str, float]:
    """Copy bandwidth (2 x bytes / time) and fp32 matmul rate, medians of a few runs."""
    elements = (16 if quick else 64) * 2**20
    src = torch.ones(elements)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    bandwidth = 2 * src.numel() * src.element_size() / statistics.median(times)
    size = 1024 if quick else 2048
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    a @ b
    times = []
    for _ in range(3 if quick else 5):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    flops = 2 * size**3 / statistics.median(times)
    return {"copy_bandwidth_gb_s": bandwidth / 1e9, "matmul_fp32_gflop_s": flops / 1e9,
            "matmul_size": size, "copy_mib": elements * 4 / 2**20}


def roofline_ms(stage: StageShape, machine: dict[str, float], element_size: int = 4) -> float:
    """Ideal forward time: max(bytes / bandwidth, FLOPs / matmul rate), PERFORMANCE.md formulas."""
    n, q, c, g, k, d = (stage.batch, stage.size * stage.size, stage.channels, stage.group,
                        stage.points, stage.channels_per_group)
    flops = n * q * g * k * (8 * d + 20)
    data = element_size * (n * q * c + n * q * c + n * q * 3 * g * k)
    seconds = max(data / (machine["copy_bandwidth_gb_s"] * 1e9),
                  flops / (machine["matmul_fp32_gflop_s"] * 1e9))
    return 1e3 * seconds


def timing_child(backend: str, shapes: str, stage_index: int, repeats: int,
                 single_thread: bool) -> None:
    """Runs in a subprocess: per-call times (seconds) of forward and forward + backward, as JSON.

    Default: wall time with all threads. ``single_thread``: torch and numba limited to one
    thread from the start, and the main thread's CPU time, a measure of the work that other load
    on a shared machine disturbs far less than wall time.
    """
    import numba

    if single_thread:
        torch.set_num_threads(1)
        numba.set_num_threads(1)
    clock = time.thread_time if single_thread else time.perf_counter
    suffix = "_cpu_1thread" if single_thread else ""
    stage = SHAPE_SETS[shapes][stage_index]
    tensors = make_inputs(stage)
    input, offset, mask, _ = tensors
    samples: dict[str, list[float]] = {}
    for mode, fn in (
        ("forward", functools.partial(run_op, backend, stage, input, offset, mask)),
        ("forward_backward", functools.partial(forward_and_backward, backend, stage, tensors)),
    ):
        fn()
        fn()
        times = []
        for _ in range(repeats):
            start = clock()
            fn()
            times.append(clock() - start)
        samples[mode + suffix] = times
    print(json.dumps(samples))


def measure_times(shapes: str, stage_index: int, repeats: int,
                  rounds: int = 3) -> dict[str, dict[str, float]]:
    """Per backend and mode: median wall milliseconds, and minimum single-thread CPU milliseconds.

    Every backend runs in fresh processes of its own, so that the other backend's thread pool
    (torch's and numba's OpenMP pools are separate and spin for a while after parallel work)
    cannot slow it down; the backends take turns in ``rounds`` processes each, so that a slow
    spell of the machine hits both alike.
    """
    per_round = max(1, -(-repeats // rounds))
    samples: dict[str, dict[str, list[float]]] = {b: {m: [] for m in MODES} for b in BACKENDS}
    for _ in range(rounds):
        for single_thread in (False, True):
            for backend in BACKENDS:
                command = [sys.executable, __file__, "--shapes", shapes, "--timing-child",
                           backend, str(stage_index), str(per_round)]
                if single_thread:
                    command.append("--single-thread")
                result = subprocess.run(command, check=True, capture_output=True, text=True)
                child = json.loads(result.stdout.strip().splitlines()[-1])
                for mode, values in child.items():
                    samples[backend][mode].extend(values)
    return {
        mode: {b: 1e3 * (min(samples[b][mode]) if "cpu" in mode
                         else statistics.median(samples[b][mode])) for b in BACKENDS}
        for mode in MODES
    }


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(backend: str, shapes: str, stage_index: int) -> None:
    """Runs in a subprocess: peak extra RSS of one forward + backward, printed as JSON."""
    stage = SHAPE_SETS[shapes][stage_index]
    tiny = StageShape("tiny", 6, stage.group * 2, stage.group, batch=1)
    forward_and_backward(backend, tiny, make_inputs(tiny))
    tensors = make_inputs(stage)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _rss_kib("VmRSS")
    forward_and_backward(backend, stage, tensors)
    peak = _rss_kib("VmHWM")
    print(json.dumps({"peak_extra_mib": (peak - before) / 1024}))


def measure_memory(backend: str, shapes: str, stage_index: int) -> float:
    result = subprocess.run(
        [sys.executable, __file__, "--shapes", shapes, "--memory-child", backend,
         str(stage_index)],
        check=True, capture_output=True, text=True,
    )
    return float(json.loads(result.stdout.strip().splitlines()[-1])["peak_extra_mib"])


def environment() -> dict[str, Any]:
    import numba

    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": _threading_layer(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numba": numba.__version__,
        "platform": platform.platform(),
        # Other work on the machine during the run (1, 5, 15 minute load averages).
        "load_average": list(os.getloadavg()),
    }


def _threading_layer() -> str:
    import numba

    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return "not initialised"


def run_cpu(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    machine = measure_machine(args.quick)
    stages = []
    for index, stage in enumerate(SHAPE_SETS[args.shapes]):
        times = measure_times(args.shapes, index, args.repeats)
        forward, train = times["forward"], times["forward_backward"]
        memory = {b: measure_memory(b, args.shapes, index) for b in BACKENDS}
        roof = roofline_ms(stage, machine)
        entry = {
            "stage": asdict(stage),
            "forward_ms": forward,
            "forward_backward_ms": train,
            "peak_memory_mib": memory,
            "roofline_forward_ms": roof,
            "roofline_share_forward": {b: roof / forward[b] for b in BACKENDS},
            "speedup_forward": forward["reference"] / forward["numba"],
            "speedup_forward_backward": train["reference"] / train["numba"],
            "memory_fraction": memory["numba"] / memory["reference"],
            "cpu_ms_1thread": {
                "forward": times["forward_cpu_1thread"],
                "forward_backward": times["forward_backward_cpu_1thread"],
            },
            "cpu_ratio_1thread": {
                mode: times[f"{mode}_cpu_1thread"]["reference"]
                / times[f"{mode}_cpu_1thread"]["numba"]
                for mode in ("forward", "forward_backward")
            },
        }
        entry["checks"] = stage_checks(index, entry, stage1_targets=args.shapes == "t")
        stages.append(entry)
        print(f"{stage.name}: forward x{entry['speedup_forward']:.1f}, forward+backward "
              f"x{entry['speedup_forward_backward']:.1f}, memory "
              f"{entry['memory_fraction']:.2f} of the reference", flush=True)
    env = environment()
    return {"environment": env, "machine": machine, "repeats": args.repeats,
            "quick": args.quick, "shapes": args.shapes, "stages": stages,
            "all_pass": all(all(c["pass"] for c in s["checks"]) for s in stages)}


def stage_checks(index: int, entry: dict[str, Any], *,
                 stage1_targets: bool = True) -> list[dict[str, Any]]:
    """The targets one stage's results are held to (stage 1 of InternImage-T has its own)."""
    checks = []

    def check(what: str, value: float, target: float, higher_is_better: bool = True) -> None:
        ok = value >= target if higher_is_better else value <= target
        checks.append({"target": what, "value": value, "limit": target, "pass": ok})

    if index == 0 and stage1_targets:
        check("forward speedup >= 20x", entry["speedup_forward"], STAGE1_FORWARD_SPEEDUP)
        check("forward+backward speedup >= 10x", entry["speedup_forward_backward"],
              STAGE1_TRAIN_SPEEDUP)
    check("forward speedup >= 5x", entry["speedup_forward"], EVERY_STAGE_SPEEDUP)
    check("forward+backward speedup >= 5x", entry["speedup_forward_backward"],
          EVERY_STAGE_SPEEDUP)
    check("forward+backward peak memory <= 1/3 of reference", entry["memory_fraction"],
          MEMORY_FRACTION, higher_is_better=False)
    return checks


def markdown(results: dict[str, Any]) -> str:
    env, machine = results["environment"], results["machine"]
    lines = [
        "# DCNv3 operator on CPU: numba kernels vs the PyTorch reference"
        + (f" ({results['shapes']} shapes)" if results.get("shapes", "t") != "t" else ""),
        "",
        f"- Date (UTC): {env['date_utc']}",
        f"- CPU: {env['cpu']}, {env['cpu_cores']} cores; torch threads {env['torch_threads']}, "
        f"numba threads {env['numba_threads']} ({env['numba_threading_layer']} layer)",
        f"- Python {env['python']}, torch {env['torch']}, numba {env['numba']}",
        f"- Load average at the end of the run (1/5/15 min): "
        f"{', '.join(f'{v:.2f}' for v in env['load_average'])} (the machine is shared)",
        f"- Measured copy bandwidth {machine['copy_bandwidth_gb_s']:.1f} GB/s "
        f"({machine['copy_mib']:.0f} MiB copy), fp32 matmul "
        f"{machine['matmul_fp32_gflop_s']:.0f} GFLOP/s ({machine['matmul_size']}^3)",
        f"- float32, batch 8, k=3, stride 1, pad 1, "
        f"D={results['stages'][0]['stage']['channels'] // results['stages'][0]['stage']['group']}, "
        f"P=9; median of {results['repeats']} "
        "calls after warm-up, each backend in its own processes (3 per backend, taking turns). "
        "Peak memory: extra resident memory of one forward+backward in a fresh process "
        "(VmHWM after minus VmRSS before).",
        "",
        "| stage | shape (HxW, C, G) | ref fwd ms | numba fwd ms | fwd speedup | ref fwd+bwd ms "
        "| numba fwd+bwd ms | fwd+bwd speedup | ref peak MiB | numba peak MiB | memory ratio "
        "| roofline share fwd (numba / ref) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in results["stages"]:
        st = s["stage"]
        lines.append(
            f"| {st['name']} | {st['size']}x{st['size']}, {st['channels']}, {st['group']} "
            f"| {s['forward_ms']['reference']:.2f} | {s['forward_ms']['numba']:.2f} "
            f"| {s['speedup_forward']:.1f}x | {s['forward_backward_ms']['reference']:.2f} "
            f"| {s['forward_backward_ms']['numba']:.2f} | {s['speedup_forward_backward']:.1f}x "
            f"| {s['peak_memory_mib']['reference']:.1f} | {s['peak_memory_mib']['numba']:.1f} "
            f"| {s['memory_fraction']:.2f} | {100 * s['roofline_share_forward']['numba']:.1f}% / "
            f"{100 * s['roofline_share_forward']['reference']:.1f}% |"
        )
    lines += [
        "",
        "## Single-thread CPU time (informational)",
        "",
        "The same calls in processes limited to one thread (torch and numba) from the start, "
        "timed by the thread's CPU clock, minimum of the runs. On a shared machine this measures "
        "the work with far less disturbance from other load than wall time does; the targets "
        "above use wall time on both cores.",
        "",
        "| stage | ref fwd ms | numba fwd ms | fwd ratio | ref fwd+bwd ms | numba fwd+bwd ms "
        "| fwd+bwd ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in results["stages"]:
        cpu, ratio = s["cpu_ms_1thread"], s["cpu_ratio_1thread"]
        lines.append(
            f"| {s['stage']['name']} | {cpu['forward']['reference']:.2f} "
            f"| {cpu['forward']['numba']:.2f} | {ratio['forward']:.1f}x "
            f"| {cpu['forward_backward']['reference']:.2f} "
            f"| {cpu['forward_backward']['numba']:.2f} | {ratio['forward_backward']:.1f}x |"
        )
    lines += ["", "## Targets", "", "| stage | target | value | result |", "|---|---|---|---|"]
    for s in results["stages"]:
        for c in s["checks"]:
            lines.append(f"| {s['stage']['name']} | {c['target']} | {c['value']:.2f} "
                         f"| {'PASS' if c['pass'] else 'FAIL'} |")
    lines += ["", f"Overall: {'PASS' if results['all_pass'] else 'FAIL'}", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per measurement (default 21, or 5 with --quick)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller "
                        "machine probes, for a smoke run")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--shapes", choices=tuple(SHAPE_SETS), default="t",
                        help="stage shapes of InternImage-T (D = 16) or -atto (D = 8); CPU only")
    parser.add_argument("--memory-child", nargs=2, metavar=("BACKEND", "STAGE"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--timing-child", nargs=3, metavar=("BACKEND", "STAGE", "REPEATS"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--single-thread", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 5 if args.quick else 21
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child[0], args.shapes, int(args.memory_child[1]))
        return 0
    if args.timing_child:
        timing_child(args.timing_child[0], args.shapes, int(args.timing_child[1]),
                     int(args.timing_child[2]), args.single_thread)
        return 0
    if args.device == "cuda":
        # The GPU section lives in its own module, which writes its JSON and markdown results.
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from dcnv3_gpu import main as gpu_main

        gpu_argv = ["--repeats", str(args.repeats), "--output-dir", str(args.output_dir)]
        return gpu_main(gpu_argv + (["--quick"] if args.quick else []))
    results = run_cpu(args)
    stem = "dcnv3_cpu" if args.shapes == "t" else f"dcnv3_cpu_{args.shapes}"
    atomic_write_text(args.output_dir / f"{stem}.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(args.output_dir / f"{stem}.md", markdown(results))
    print(f"overall: {'PASS' if results['all_pass'] else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
