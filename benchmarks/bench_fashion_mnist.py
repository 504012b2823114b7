"""Train a small InternImage on the full Fashion-MNIST (60k / 10k) and record the result.

Usage:
    python benchmarks/bench_fashion_mnist.py [--epochs 10] [--model internimage_atto] \
        [--root /usr/share/datasets/fashion-mnist] [--device cuda] [--tag cuda] \
        [--set key=value ...]
    python benchmarks/bench_fashion_mnist.py --resume runs/bench-fashion-mnist-<date> [--tag ...]

A run stopped before its end (a machine that gives a job limited time, say) continues from its
last checkpoint with ``--resume``; the reported time is that of the whole run, every call
together. Set ``checkpoint_every`` (steps) to lose less work when a call is cut off.

Writes fashion_mnist[_TAG].json, fashion_mnist[_TAG].md and fashion_mnist[_TAG]_curves.png under
benchmarks/results/ (or --output-dir): test accuracy, wall time, the resolved config, machine
(GPU included when one trains), library versions and date. The run folder with checkpoints goes
to runs/bench-fashion-mnist-<date>.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

from bench_common import library_versions, machine_info
from internimage.files import atomic_write_bytes, atomic_write_text
from internimage.train import PRESETS, Trainer, apply_overrides, config_to_dict
from internimage.train.distributed import resolve_device

RESULTS = Path(__file__).resolve().parent / "results"


def _where(machine: dict[str, object]) -> str:
    if "gpu" in machine:
        return f"one {machine['gpu']} (host: {machine['cpu_count']} logical cores)"
    return f"{machine['cpu']} ({machine['cpu_count']} logical cores)"


def main() -> None:
    """Run the benchmark and write the result files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--model", default="internimage_atto")
    parser.add_argument("--root", default=None, help="folder with the full IDX files")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="extra config overrides")
    parser.add_argument("--target", type=float, default=94.0, help="top-1 target (percent)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--output-dir", type=Path, default=RESULTS,
                        help="where the result files go (default benchmarks/results)")
    parser.add_argument("--tag", default="",
                        help="suffix of the result file names, to keep runs apart (e.g. cuda)")
    parser.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                        help="continue a stopped run (its stored settings are kept)")
    args = parser.parse_args()
    if args.resume is not None and args.overrides:
        parser.error("--resume continues the run with its stored settings; drop --set")

    stamp = datetime.now(timezone.utc)
    command = shlex.join(["python", "benchmarks/bench_fashion_mnist.py", *sys.argv[1:]])
    if args.resume is not None:
        trainer = Trainer(resume=args.resume)
        config = trainer.config
    else:
        assignments = [
            "data.dataset=fashion-mnist",
            f"model.name={args.model}",
            f"schedule.epochs={args.epochs}",
            "output_dir=runs",
            f"name=bench-fashion-mnist-{stamp:%Y%m%d-%H%M%S}",
            "log_every=100",
            f"device={args.device}",
        ]
        if args.root is not None:
            assignments.append(f"data.root={args.root}")
        config = apply_overrides(PRESETS["fashion-mnist"], assignments + args.overrides)
        trainer = Trainer(config)
    result = trainer.fit()

    output_dir: Path = args.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = f"fashion_mnist_{args.tag}" if args.tag else "fashion_mnist"
    plot = output_dir / f"{stem}_curves.png"
    atomic_write_bytes(plot, Path(result.plot).read_bytes())
    top1 = float(result.final["val_top1"])
    record = {
        "benchmark": "InternImage on full Fashion-MNIST (60,000 train / 10,000 test)",
        "date_utc": stamp.isoformat(timespec="seconds"),
        "test_top1": top1,
        "test_top5": float(result.final["val_top5"]),
        "best_top1": result.best_metric,
        "target_top1": args.target,
        "target_met": top1 >= args.target,
        # The EMA of the weights is evaluated too when the run keeps one (ema_decay set).
        "test_top1_ema": float(result.final["ema_top1"]) if "ema_top1" in result.final else None,
        "wall_time_s": round(result.total_time_s, 1),
        "dcnv3_backend": os.environ.get("INTERNIMAGE_DCNV3_BACKEND", "auto"),
        "machine": machine_info(resolve_device(config.device)),
        "versions": library_versions("numpy", "numba", "kornia"),
        "config": config_to_dict(config),
        "curves": plot.name,
        "command": command,
    }
    atomic_write_text(output_dir / f"{stem}.json", json.dumps(record, indent=2) + "\n")
    md = [
        "# InternImage on full Fashion-MNIST",
        "",
        f"- date (UTC): {record['date_utc']}",
        f"- model: {config.model.name} at {config.data.image_size} px, "
        f"{config.schedule.epochs} epochs, total batch {config.batch_size}",
        f"- test top-1: **{top1:.2f}%** (top-5 {record['test_top5']:.2f}%, best epoch "
        f"{result.best_metric:.2f}%); target {args.target:.1f}%: "
        f"{'met' if record['target_met'] else 'NOT met'}",
        *(
            [f"- test top-1 of the weight EMA: {record['test_top1_ema']:.2f}%"]
            if record["test_top1_ema"] is not None else []
        ),
        f"- wall time: {result.total_time_s / 60:.1f} min on {_where(record['machine'])}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in record['versions'].items())}",
        "",
        f"![curves]({plot.name})",
        "",
        f"Full config: {stem}.json. Command{' (last call)' if args.resume else ''}:",
        "",
        f"    {command}",
        "",
    ]
    atomic_write_text(output_dir / f"{stem}.md", "\n".join(md))
    print(json.dumps({k: record[k] for k in ("test_top1", "wall_time_s", "target_met")}))


if __name__ == "__main__":
    main()
