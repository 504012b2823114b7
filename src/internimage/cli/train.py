"""``internimage train``: train or fine-tune a classifier (single process or under torchrun)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]

# Flag -> dotted config key, for the settings people change most; every other field is reachable
# with --set.
_FLAG_KEYS: dict[str, str] = {
    "task": "task",
    "model": "model.name",
    "pretrained": "model.pretrained",
    "finetune": "model.finetune",
    "drop_path_rate": "model.drop_path_rate",
    "grad_checkpointing": "model.grad_checkpointing",
    "data": "data.dataset",
    "data_root": "data.root",
    "image_size": "data.image_size",
    "workers": "data.num_workers",
    "epochs": "schedule.epochs",
    "warmup_epochs": "schedule.warmup_epochs",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "layer_decay": "optim.layer_decay",
    "clip_grad": "optim.clip_grad",
    "batch_size": "batch_size",
    "accum_steps": "accum_steps",
    "amp": "amp",
    "ema_decay": "ema_decay",
    "seed": "seed",
    "device": "device",
    "strategy": "strategy",
    "processes": "processes",
    "output_dir": "output_dir",
    "name": "name",
    "checkpoint_every": "checkpoint_every",
}


def add_parser(subparsers: Any) -> None:
    """Register ``train``."""
    from internimage.train.config import PRESETS, all_datasets

    parser = subparsers.add_parser(
        "train",
        help="train a classifier, a segmentation model or a detector (no arguments: the "
             "Fashion-MNIST quick job)",
        description=(
            "Train InternImage: a classifier, UperNet for semantic segmentation (--preset "
            "fashion-mnist-scenes, --preset ade20k) or Mask R-CNN for detection and instance "
            "segmentation (--preset fashion-mnist-scenes-detection, --preset coco-1x, --preset "
            "coco-3x). Without arguments it trains a small "
            "classifier on the bundled Fashion-MNIST subset. Settings come from --preset (or "
            "--config FILE), then "
            "--set section.key=value overrides, then the explicit flags below. On a CPU, "
            "--processes N trains in N local worker processes that share each batch (the "
            "Fashion-MNIST preset uses one per core). Several machines or GPUs: torchrun "
            "--nproc_per_node N -m internimage.cli.main train ..."
        ),
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="fashion-mnist",
                        help="starting configuration (default: %(default)s)")
    parser.add_argument("--config", type=Path, default=None,
                        help="JSON/YAML config file (replaces the preset; missing keys keep "
                             "the preset's values)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a config field, e.g. --set optim.lr=1e-3 (repeatable)")
    parser.add_argument("--resume", type=Path, default=None,
                        help="continue a run from its last.pt (or run folder); its saved config "
                             "is used, with --set and flags applied on top")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in the run folder (output_dir/name); "
                             "without it such a folder is refused")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as JSON and exit")
    group = parser.add_argument_group("common settings (shortcuts for --set)")
    group.add_argument("--task", choices=["classification", "segmentation", "detection"])
    group.add_argument("--model", help="model name, e.g. internimage_t")
    group.add_argument("--pretrained", action="store_const", const="true",
                       help="start from the released weights")
    group.add_argument("--finetune", help="checkpoint to start from (a classifier gets a new head; "
                       "segmentation and detection take its backbone)")
    group.add_argument("--drop-path-rate", dest="drop_path_rate")
    group.add_argument("--grad-checkpointing", action="store_const", const="true")
    group.add_argument("--data", choices=list(all_datasets()))
    group.add_argument("--data-root", help="dataset folder")
    group.add_argument("--image-size", dest="image_size")
    group.add_argument("--workers", help="DataLoader workers per process")
    group.add_argument("--epochs")
    group.add_argument("--warmup-epochs", dest="warmup_epochs")
    group.add_argument("--lr", help="peak lr per 512 images (scaled by the total batch)")
    group.add_argument("--weight-decay", dest="weight_decay")
    group.add_argument("--layer-decay", dest="layer_decay")
    group.add_argument("--clip-grad", dest="clip_grad")
    group.add_argument("--batch-size", dest="batch_size", help="images per process")
    group.add_argument("--accum-steps", dest="accum_steps")
    group.add_argument("--amp", choices=["auto", "none", "bf16", "fp16"])
    group.add_argument("--ema-decay", dest="ema_decay", help="'none' disables the EMA")
    group.add_argument("--seed")
    group.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    group.add_argument("--strategy", choices=["ddp", "fsdp"])
    group.add_argument("--processes",
                       help="CPU worker processes sharing each batch: N or 'auto' (one per core)")
    group.add_argument("--output-dir", dest="output_dir")
    group.add_argument("--name", help="run folder name (default: a UTC timestamp)")
    group.add_argument("--checkpoint-every", dest="checkpoint_every",
                       help="also save last.pt every N optimiser steps")
    parser.set_defaults(func=run)


def _assignments(args: argparse.Namespace) -> list[str]:
    out = list(args.overrides)
    for flag, key in _FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            out.append(f"{key}={value}")
    return out


def run(args: argparse.Namespace) -> int:
    """Resolve the config, train, print a summary; returns the exit code."""
    import json

    from internimage.errors import UsageError
    from internimage.train.config import (
        PRESETS,
        apply_overrides,
        config_to_dict,
        load_config_file,
        parse_overrides,
    )
    from internimage.train.distributed import shutdown_distributed
    from internimage.train.trainer import Trainer

    assignments = _assignments(args)
    if args.resume is not None:
        for given, flag in ((args.config, "--config"), (args.name, "--name"),
                            (args.output_dir, "--output-dir")):
            if given is not None:
                raise UsageError(
                    f"--resume continues the run with its saved config in its own folder; "
                    f"drop {flag}"
                )
        if args.overwrite:
            raise UsageError("--resume continues a run and --overwrite replaces one; choose one")
        if args.print_config:
            raise UsageError("--print-config shows a new run's config; the run to resume has "
                             "its own in config.json")
        # Applied to the run's stored config, which checks them.
        trainer = Trainer(resume=args.resume, config_overrides=parse_overrides(assignments))
    else:
        base = PRESETS[args.preset]
        if args.config is not None:
            base = load_config_file(args.config, base=base)
        config = apply_overrides(base, assignments)
        if args.print_config:
            print(json.dumps(config_to_dict(config), indent=2))
            return 0
        trainer = Trainer(config, overwrite=args.overwrite)
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        run_dir = trainer.run_dir
        if run_dir is not None and (run_dir / "last.pt").is_file():
            raise Interrupted(
                f"interrupted; continue with: internimage train --resume {run_dir}"
            ) from None
        raise
    finally:
        shutdown_distributed()
    if trainer.ctx.is_main:
        final = result.final
        main = result.main_metric
        label = _METRIC_LABELS.get(main, main)
        nan = float("nan")
        lines = [
            "",
            f"finished in {result.wall_time_s / 60:.1f} min"
            + (f" ({result.total_time_s / 60:.1f} min with the earlier calls)"
               if result.total_time_s > result.wall_time_s else ""),
        ]
        if main == "top1":
            lines.append(
                f"  test top-1 accuracy: {final.get('val_top1', nan):.2f}% "
                f"(top-5 {final.get('val_top5', nan):.2f}%, best top-1 "
                f"{result.best_metric:.2f}%)"
            )
        else:
            lines.append(
                f"  validation {label}: {final.get(f'val_{main}', nan):.2f}% "
                f"(best {result.best_metric:.2f}%)"
            )
        if "val_segm_AP" in final:
            lines.append(f"  validation mask AP: {final['val_segm_AP']:.2f}%")
        if f"ema_{main}" in final:
            lines.append(f"  EMA {label}: {final[f'ema_{main}']:.2f}%")
        lines += [
            f"  checkpoint: {result.last_checkpoint} (best: {result.best_checkpoint})",
            f"  curves:     {result.plot}",
            f"  metrics:    {result.metrics_csv}",
        ]
        if main == "top1":
            lines.append(f"  evaluate:   internimage eval --checkpoint {result.best_checkpoint}")
        print("\n".join(lines), flush=True)
    return 0


# How the summary names a task's main metric.
_METRIC_LABELS = {"top1": "top-1 accuracy", "mIoU": "mIoU", "bbox_AP": "box AP"}


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training, with how to continue the run in its message."""
