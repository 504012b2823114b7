"""Table 6 of the InternImage paper at small scale: each DCNv3 modification undone, trained with
one budget on Fashion-MNIST classification and on the Fashion-MNIST scenes segmentation demo.

The paper trains InternImage-T on ImageNet and fine-tunes on COCO with each of DCNv3's three
modifications of DCNv2 undone. Here the network is the project's small one (the
``fashion-mnist`` preset: ``internimage_atto`` widths, depths 1-1-3-1), in four variants:

- ``full``: DCNv3 as in the paper;
- ``unshared``: a ``C x C`` projection per sampling point (``model.dcn_weights=unshared``);
- ``single-group``: one group in every stage (``model.dcn_groups=1``);
- ``sigmoid``: point weights by an element-wise sigmoid instead of the softmax over a group's
  points (``model.mask_normalization=sigmoid``).

Every variant and seed gets the same budget: the presets' batch, learning rate and schedule
shape, and this script's epochs and image sizes (default: classification 4 epochs at 64 px,
segmentation 5 epochs at 128 px; ``--epochs``, ``--image-size``, ``--seg-epochs``,
``--seg-image-size``). Classification trains on full Fashion-MNIST
(``data.dataset=fashion-mnist``, 60k training images, top-1 on the 10k test images).
Segmentation trains the ``fashion-mnist-scenes`` preset (UperNet, mIoU on the held-out scenes).
Like the paper's detection models, each segmentation run starts from the classifier trained
here with the same variant and seed (its final ``last.pt``, not the best epoch, so that nothing
is chosen on the test images); with ``--seg-from-scratch``, or when classification is not among
``--tasks``, it starts from random weights. The unshared variant is slower: no fused DCNv3
kernel can apply a matrix per point, so it samples with the pure-PyTorch path.

The table reports the last epoch's validation metric (the fixed budget's result), mean and sample
standard deviation over the seeds, and the difference of the means from the full DCNv3.

Usage::

    python benchmarks/ablation_table6.py --seeds 0 1 2
    python benchmarks/ablation_table6.py --tasks classification --variants full sigmoid \\
        --seeds 0 --epochs 1 --train-limit 2000 --cls-set data.dataset=fashion-mnist-subset

Writes ``<stem>.json`` (every run), ``<stem>.md`` (the table) and ``<stem>_curves.png``
(validation metric per epoch, mean over seeds) under ``--output-dir`` (default
``benchmarks/results/``), after every run, so an interrupted run leaves the finished ones; the
run folders go under ``--runs-dir``.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from bench_common import library_versions, machine_info, write_results
from internimage.draw import figure_png
from internimage.files import atomic_write_bytes
from internimage.models.checkpoint import read_checkpoint
from internimage.train import PRESETS, TrainConfig, Trainer, apply_overrides, config_to_dict
from internimage.train.tasks import create_task, without_starting_weights

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Variant:
    """One column of the paper's Table 6: DCNv3 with (at most) one modification undone."""

    name: str
    label: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class TaskSpec:
    """How one task of the ablation is trained and scored."""

    name: str
    preset: str
    metric: str
    label: str
    default_epochs: int
    default_image_size: int


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("full", "full DCNv3", ()),
        Variant("unshared", "unshared weights", ("model.dcn_weights=unshared",)),
        Variant("single-group", "single group", ("model.dcn_groups=1",)),
        Variant("sigmoid", "sigmoid point weights", ("model.mask_normalization=sigmoid",)),
    )
}

# Default budgets, small enough for 2 CPU cores (4 variants x 3 seeds of each task in about
# 3 hours; measured there: an epoch of full Fashion-MNIST takes about 1.9 minutes with DCNv3 and
# 2.9 with unshared weights, an epoch of the 2000 scenes about 1.3 and 1.45). Classification: 4
# epochs of 60k images show the network about as many images as the preset's 11 epochs of the
# 20k subset, at the preset's 64 px (16x16 maps in the first stage; 32 px learns markedly worse,
# see the preset). Segmentation: 5 epochs from the classifier, on the scenes' full 128 px.
TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("classification", "fashion-mnist", "top1", "top-1", 4, 64),
        TaskSpec("segmentation", "fashion-mnist-scenes", "mIoU", "mIoU", 5, 128),
    )
}
# Classification trains on the full Fashion-MNIST here (the preset uses the bundled subset).
CLASSIFICATION_DATA = "data.dataset=fashion-mnist"
PAPER_DIRECTION = (
    "Paper (Table 6, InternImage-T on ImageNet classification and COCO detection): undoing "
    "each of the modifications (unshared weights, a single group, sigmoid instead of softmax) "
    "lowers the accuracy of both tasks. Only that direction is quoted here, not the paper's "
    "numbers."
)


def run_overrides(
    task: TaskSpec, variant: Variant, seed: int, args: argparse.Namespace, name: str
) -> list[str]:
    """The ``key=value`` assignments of one run, in order (later ones win): the run's place,
    the data, the budget, the variant, the seed, then ``--set`` and the task's own ``--*-set``.
    """
    classification = task.name == "classification"
    epochs = args.epochs if classification else args.seg_epochs
    size = args.image_size if classification else args.seg_image_size
    assignments = ["device=cpu", f"output_dir={args.runs_dir}", f"name={name}", "progress=false"]
    if classification:
        assignments.append(CLASSIFICATION_DATA)
    assignments += [
        f"schedule.epochs={epochs if epochs is not None else task.default_epochs}",
        f"data.image_size={size if size is not None else task.default_image_size}",
    ]
    if args.train_limit is not None:
        assignments.append(f"data.train_limit={args.train_limit}")
    if args.val_limit is not None:
        assignments.append(f"data.val_limit={args.val_limit}")
    assignments += [*variant.overrides, f"seed={seed}", *args.overrides]
    assignments += args.cls_overrides if classification else args.seg_overrides
    return assignments


def validation_curve(metrics_csv: Path, metric: str) -> list[list[float]]:
    """``[epoch, val_<metric>]`` of each evaluated epoch, from a run's metrics.csv."""
    with metrics_csv.open(newline="") as handle:
        return [[int(row["epoch"]), float(row[f"val_{metric}"])]
                for row in csv.DictReader(handle) if row.get(f"val_{metric}") not in (None, "")]


def count_parameters(config: TrainConfig, checkpoint: Path) -> int:
    """Parameters of the model a run trained (classifier or UperNet), rebuilt from its config
    and the classes in its checkpoint."""
    task = create_task(without_starting_weights(config))
    task.classes = tuple(read_checkpoint(checkpoint)["classes"])  # type: ignore[arg-type]
    return sum(p.numel() for p in task.build_model().parameters())


def classifier_parameters(variant: Variant, overrides: Sequence[str]) -> int:
    """Parameters of the variant's 10-class classifier, the table's model size (the same
    network whichever tasks ran)."""
    from internimage.classification.task import create_classifier

    config = apply_overrides(PRESETS["fashion-mnist"], [*variant.overrides, *overrides])
    return sum(p.numel() for p in create_classifier(config, 10).parameters())


def train_one(
    task: TaskSpec, variant: Variant, seed: int, args: argparse.Namespace, name: str,
    finetune: Path | None,
) -> dict[str, Any]:
    """Train one run in this process and return its record."""
    assignments = run_overrides(task, variant, seed, args, name)
    if finetune is not None:
        assignments.append(f"model.finetune={finetune}")
    config = apply_overrides(PRESETS[task.preset], assignments)
    result = Trainer(config).fit()
    return {
        "task": task.name,
        "variant": variant.name,
        "seed": seed,
        "metric": task.metric,
        "final": float(result.final[f"val_{task.metric}"]),
        "best": float(result.best_metric),
        "curve": validation_curve(result.metrics_csv, task.metric),
        "wall_time_s": round(result.total_time_s, 1),
        "params": count_parameters(config, result.last_checkpoint),
        "epochs": config.schedule.epochs,
        "image_size": config.data.image_size,
        "batch_size": config.batch_size,
        "lr": config.optim.lr,
        "finetune": str(finetune) if finetune is not None else None,
        "run_dir": str(result.run_dir),
        "last_checkpoint": str(result.last_checkpoint),
        "config": config_to_dict(config),
    }


def summarize(runs: list[dict[str, Any]], task: str, variant: str) -> dict[str, Any] | None:
    """Mean and sample standard deviation of the final metric over a variant's seeds."""
    values = [r["final"] for r in runs if r["task"] == task and r["variant"] == variant]
    if not values:
        return None
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "wall_time_s": statistics.fmean(
            r["wall_time_s"] for r in runs if r["task"] == task and r["variant"] == variant
        ),
    }


def summary_table(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{task: {variant: summary with delta vs full}}`` over the finished runs."""
    table: dict[str, dict[str, Any]] = {}
    for task in record["settings"]["tasks"]:
        rows: dict[str, Any] = {}
        for variant in record["settings"]["variants"]:
            rows[variant] = summarize(record["runs"], task, variant)
        full = rows.get("full")
        for summary in rows.values():
            if summary is not None:
                summary["delta"] = (summary["mean"] - full["mean"]) if full else None
        table[task] = rows
    return table


def _cell(summary: dict[str, Any] | None, variant: str) -> tuple[str, str]:
    """``(mean ± std, delta)`` of one task's summary of ``variant``."""
    if summary is None:
        return "n/a", "n/a"
    value = f"{summary['mean']:.2f}"
    if summary["std"] is not None:
        value += f" ± {summary['std']:.2f}"
    delta = summary["delta"]
    if variant == "full":
        return value, "—"
    return value, "n/a" if delta is None else f"{delta:+.2f}"


def markdown(record: dict[str, Any]) -> list[str]:
    """The results' table and notes."""
    s = record["settings"]
    table = record["summary"]
    md = [
        "# Table 6 ablation at small scale: DCNv3 modifications undone",
        "",
        f"- date (UTC): {record['date_utc']}",
        f"- seeds: {', '.join(map(str, s['seeds']))}; every variant has the same budget",
    ]
    for task in s["tasks"]:
        b = s["budget"][task]
        limits = ", ".join(
            f"{key} {b[key]}" for key in ("train_limit", "val_limit") if b[key] is not None
        )
        md.append(
            f"- {task}: preset `{b['preset']}` ({b['model']} widths, depths "
            f"{'-'.join(map(str, b['depths']))}) on `{b['dataset']}`"
            f"{f' ({limits})' if limits else ''}, {b['epochs']} epoch(s) at {b['image_size']} px, "
            f"batch {b['batch_size']}, lr {b['lr']:g} per 512 images; metric: validation "
            f"{TASKS[task].label} after the last epoch"
        )
    if "segmentation" in s["tasks"]:
        md.append(
            "- segmentation start: "
            + ("from scratch" if s["seg_start"] == "scratch" else
               "the classifier trained here with the same variant and seed (its last.pt)")
        )
    md += [
        "",
        "| variant | params (M) | top-1 (%) | Δ top-1 | mIoU (%) | Δ mIoU | min per run |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in s["variants"]:
        top1, d_top1 = _cell(table.get("classification", {}).get(name), name)
        miou, d_miou = _cell(table.get("segmentation", {}).get(name), name)
        times = [
            f"{summary['wall_time_s'] / 60:.1f}"
            for task in s["tasks"] if (summary := table[task].get(name)) is not None
        ]
        md.append(
            f"| {VARIANTS[name].label} | {record['params'][name] / 1e6:.3f} | {top1} | "
            f"{d_top1} | {miou} | {d_miou} | {' / '.join(times) or 'n/a'} |"
        )
    md += [
        "",
        "Values are mean ± sample standard deviation over the seeds (no ± with one seed); Δ is "
        "the difference of the means from the full DCNv3 row. Params: the 10-class classifier "
        "(the UperNet adds its heads; every run's count is in the JSON). Minutes per run: "
        "classification / segmentation, mean over seeds.",
        "",
        PAPER_DIRECTION,
        "",
        f"![validation curves]({record['plot']})",
        "",
    ]
    return md


def plot(record: dict[str, Any]) -> bytes:
    """One panel per task: the validation metric per epoch, mean over seeds (band: min to max),
    one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    tasks = record["settings"]["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.0), squeeze=False)
    colors = {"full": "#1f77b4", "unshared": "#d62728", "single-group": "#2ca02c",
              "sigmoid": "#9467bd"}
    for axis, task in zip(axes[0], tasks, strict=True):
        last_epoch = 1
        for name in record["settings"]["variants"]:
            curves = [r["curve"] for r in record["runs"]
                      if r["task"] == task and r["variant"] == name and r["curve"]]
            if not curves:
                continue
            # Seeds of one variant evaluate the same epochs; a shorter curve (an unfinished
            # comparison) limits the mean to the common ones.
            length = min(len(c) for c in curves)
            epochs = [epoch for epoch, _ in curves[0][:length]]
            columns = [[c[i][1] for c in curves] for i in range(length)]
            last_epoch = max(last_epoch, epochs[-1])
            mean = [statistics.fmean(col) for col in columns]
            axis.plot(epochs, mean, marker="o", markersize=3, color=colors[name],
                      label=f"{VARIANTS[name].label} ({len(curves)} seed"
                            f"{'s' if len(curves) > 1 else ''})")
            if len(curves) > 1:
                axis.fill_between(epochs, [min(col) for col in columns],
                                  [max(col) for col in columns], color=colors[name], alpha=0.15)
        axis.set_title(f"{task}: validation {TASKS[task].label}")
        axis.set_xlabel("epoch")
        axis.set_ylabel(f"{TASKS[task].label} (%)")
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=8)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        axis.set_xlim(0.5, last_epoch + 0.5)
    fig.suptitle("DCNv3 modifications undone (paper Table 6, small scale)")
    fig.tight_layout()
    return figure_png(fig, dpi=120)


def budget(task: TaskSpec, args: argparse.Namespace) -> dict[str, Any]:
    """The settings every variant of ``task`` shares (those of the full variant's config)."""
    config = apply_overrides(
        PRESETS[task.preset], run_overrides(task, VARIANTS["full"], 0, args, "budget")
    )
    return {
        "preset": task.preset,
        "model": config.model.name,
        "depths": list(config.model.depths or ()),
        "dataset": config.data.dataset,
        "epochs": config.schedule.epochs,
        "image_size": config.data.image_size,
        "batch_size": config.batch_size,
        "lr": config.optim.lr,
        "train_limit": config.data.train_limit,
        "val_limit": config.data.val_limit,
    }


def write_all(output_dir: Path, stem: str, record: dict[str, Any]) -> None:
    """The three result files from the runs so far."""
    record["summary"] = summary_table(record)
    atomic_write_bytes(output_dir / record["plot"], plot(record))
    write_results(output_dir, stem, record, markdown(record), record["command"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--epochs", type=int, default=None,
        help=f"classification epochs (default {TASKS['classification'].default_epochs})",
    )
    parser.add_argument(
        "--image-size", type=int, default=None,
        help=f"classification side in px (default {TASKS['classification'].default_image_size})",
    )
    parser.add_argument(
        "--seg-epochs", type=int, default=None,
        help=f"segmentation epochs (default {TASKS['segmentation'].default_epochs})",
    )
    parser.add_argument(
        "--seg-image-size", type=int, default=None,
        help=f"segmentation crop side in px (default {TASKS['segmentation'].default_image_size})",
    )
    parser.add_argument("--train-limit", type=int, default=None,
                        help="data.train_limit of both tasks (default: all)")
    parser.add_argument("--val-limit", type=int, default=None,
                        help="data.val_limit of both tasks (default: all)")
    parser.add_argument("--seg-from-scratch", action="store_true",
                        help="segmentation from random weights, not from the classifiers")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override of every run")
    parser.add_argument("--cls-set", dest="cls_overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override of the classification runs")
    parser.add_argument("--seg-set", dest="seg_overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override of the segmentation runs")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"),
                        help="parent folder of the run folders")
    parser.add_argument("--stem", default="ablation_table6", help="name of the result files")
    args = parser.parse_args(argv)
    # Keep the order of the tables and runs fixed whatever order the options list them in.
    args.tasks = [t for t in TASKS if t in args.tasks]
    args.variants = [v for v in VARIANTS if v in args.variants]
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train every run, write the result files and return the record."""
    args = parse_args(argv)
    stamp = datetime.now(timezone.utc)
    shown = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "benchmarks/ablation_table6.py", *shown])
    output_dir: Path = args.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    seg_start = (
        "classifier" if "classification" in args.tasks and not args.seg_from_scratch
        else "scratch"
    )
    record: dict[str, Any] = {
        "benchmark": "InternImage Table 6 at small scale: DCNv3 modifications undone",
        "date_utc": stamp.isoformat(timespec="seconds"),
        "machine": machine_info(torch.device("cpu")),
        "versions": library_versions("numpy", "numba", "transformers", "matplotlib"),
        "command": command,
        "settings": {
            "tasks": args.tasks,
            "variants": args.variants,
            "seeds": args.seeds,
            "seg_start": seg_start,
            # Validated before the first run, so a bad override fails in seconds.
            "budget": {task: budget(TASKS[task], args) for task in args.tasks},
        },
        "params": {
            name: classifier_parameters(VARIANTS[name], [*args.overrides, *args.cls_overrides])
            for name in args.variants
        },
        "paper_direction": PAPER_DIRECTION,
        "runs": [],
        "plot": f"{args.stem}_curves.png",
    }
    started = datetime.now(timezone.utc)
    for seed in args.seeds:
        for name in args.variants:
            variant = VARIANTS[name]
            classifier: Path | None = None
            for task in args.tasks:
                run_name = f"{args.stem}-{stamp:%Y%m%d-%H%M%S}-{task}-{name}-s{seed}"
                finetune = classifier if task == "segmentation" and seg_start == "classifier" \
                    else None
                run = train_one(TASKS[task], variant, seed, args, run_name, finetune)
                if task == "classification":
                    classifier = Path(run["last_checkpoint"])
                record["runs"].append(run)
                record["total_wall_time_s"] = round(
                    (datetime.now(timezone.utc) - started).total_seconds(), 1
                )
                write_all(output_dir, args.stem, record)
    return record


if __name__ == "__main__":
    main()
