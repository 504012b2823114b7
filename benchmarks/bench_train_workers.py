"""CPU training with local worker processes against one multi-threaded process.

Usage:
    python benchmarks/bench_train_workers.py [--epochs 1] [--repeats 2] [--set key=value ...]

Trains the main job's setup (the ``fashion-mnist`` preset: InternImage-atto widths, 64 px, the
bundled 20k-image subset, batch 128) for ``--epochs`` with ``processes=1`` and with
``processes=auto``, alternating the two ``--repeats`` times so that drifts in the machine's speed
hit both alike, after an untimed warm-up run. Each time is a whole ``Trainer.fit()``: start-up
(the workers' included), training and evaluation. Writes train_workers.json and train_workers.md
under benchmarks/results/ with the machine, versions and date.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from bench_common import library_versions, machine_info
from internimage.files import atomic_write_text
from internimage.train import PRESETS, Trainer, apply_overrides
from internimage.train.launch import resolve_processes

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    """Run the comparison and write the result files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="extra config overrides")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args()

    stamp = datetime.now(timezone.utc)
    settings = {"1": "processes=1", "auto": "processes=auto"}
    times: dict[str, list[float]] = {name: [] for name in settings}
    top1: dict[str, list[float]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory(prefix="bench-train-workers-") as tmp:
        # Warm-up, not timed: this process loads the data and the compiled kernels once, so
        # that the first timed single-process run does not pay for it. (Workers are fresh
        # processes every time; their start-up is part of what is measured.)
        Trainer(apply_overrides(PRESETS["fashion-mnist"], [
            "schedule.epochs=1", "data.train_limit=256", "data.val_limit=128",
            f"output_dir={tmp}", "name=warm-up", "progress=false", "processes=1",
        ]), echo=lambda line: None).fit()
        for repeat in range(args.repeats):
            for name, setting in settings.items():
                config = apply_overrides(PRESETS["fashion-mnist"], [
                    f"schedule.epochs={args.epochs}", f"output_dir={tmp}",
                    f"name={name}-{repeat}", "progress=false", "log_every=100000", setting,
                    *args.overrides,
                ])
                started = time.perf_counter()
                result = Trainer(config, echo=lambda line: None).fit()
                times[name].append(time.perf_counter() - started)
                top1[name].append(float(result.final["val_top1"]))
                print(f"processes={name}: {times[name][-1]:.1f} s, top-1 {top1[name][-1]:.2f}%",
                      flush=True)
    workers = resolve_processes(
        apply_overrides(PRESETS["fashion-mnist"], ["processes=auto", *args.overrides]),
        torch.device("cpu"),
    )
    ratio = statistics.median(times["1"]) / statistics.median(times["auto"])
    record = {
        "benchmark": "CPU training: local worker processes vs one multi-threaded process",
        "date_utc": stamp.isoformat(timespec="seconds"),
        "epochs": args.epochs,
        "workers_for_auto": workers,
        "seconds_one_process": [round(t, 1) for t in times["1"]],
        "seconds_workers": [round(t, 1) for t in times["auto"]],
        "top1_one_process": top1["1"],
        "top1_workers": top1["auto"],
        "speedup_of_medians": round(ratio, 3),
        "machine": machine_info(torch.device("cpu")),
        "versions": library_versions("numba"),
        "overrides": args.overrides,
        "command": shlex.join(["python", "benchmarks/bench_train_workers.py", *sys.argv[1:]]),
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output_dir / "train_workers.json", json.dumps(record, indent=2) + "\n")
    machine = record["machine"]
    md = [
        "# CPU training: worker processes against one process",
        "",
        f"- date (UTC): {record['date_utc']}",
        f"- machine: {machine['cpu']} (family {machine.get('cpu_family', '?')}, model "
        f"{machine.get('model', '?')}, AVX-512 {'yes' if machine.get('avx512f') else 'no'}), "
        f"{machine['cpu_count']} logical cores",
        f"- versions: {', '.join(f'{k} {v}' for k, v in record['versions'].items())}",
        f"- setup: the `fashion-mnist` preset (main job), {args.epochs} epoch(s) per run, "
        f"runs alternating, {args.repeats} each; whole `Trainer.fit()` times",
        "",
        "| setting | seconds per run | test top-1 |",
        "|---|---|---|",
        f"| one process, {machine['torch_threads']} threads | "
        f"{', '.join(f'{t:.1f}' for t in times['1'])} | "
        f"{', '.join(f'{a:.2f}%' for a in top1['1'])} |",
        f"| `processes=auto` ({workers} workers) | "
        f"{', '.join(f'{t:.1f}' for t in times['auto'])} | "
        f"{', '.join(f'{a:.2f}%' for a in top1['auto'])} |",
        "",
        f"Speed-up (ratio of the median times): **{ratio:.2f}x**. The top-1 figures differ "
        "because the workers draw their augmentation from other random streams.",
        "",
        "Command:",
        "",
        f"    {record['command']}",
        "",
    ]
    atomic_write_text(args.output_dir / "train_workers.md", "\n".join(md))
    print(json.dumps({"speedup_of_medians": record["speedup_of_medians"]}))


if __name__ == "__main__":
    main()
