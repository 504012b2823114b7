"""Helpers shared by the benchmark scripts (imported from their own folder)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def library_versions(*packages: str) -> dict[str, str]:
    """Versions of Python, torch, internimage and each of ``packages`` that is installed."""
    import importlib

    import torch

    import internimage

    versions = {
        "internimage": internimage.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    from importlib import metadata

    for name in packages:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        # Some packages (pycocotools) carry no __version__; their distribution does.
        version = getattr(module, "__version__", None)
        if version is None:
            try:
                version = metadata.version(name)
            except metadata.PackageNotFoundError:
                version = "unknown"
        versions[name] = str(version)
    return versions


def cpu_features() -> dict[str, Any]:
    """CPU family/model numbers and the vector extensions that matter here (hosts sold under one
    model name differ by generation, and AVX-512 roughly doubles some kernels' speed)."""
    info: dict[str, Any] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("cpu family", "model") and key.replace(" ", "_") not in info:
            info[key.replace(" ", "_")] = value
        elif key == "flags":
            flags = set(value.split())
            info["avx2"] = "avx2" in flags
            info["avx512f"] = "avx512f" in flags
            break
    return info


def machine_info(device: Any) -> dict[str, Any]:
    """Where a benchmark ran: platform, CPU, threads, load at start, and the GPU when one is used.

    Args:
        device: The ``torch.device`` the benchmark computes on.
    """
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        **cpu_features(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if hasattr(os, "getloadavg"):
        # Other work on the machine slows every run; ratios measured in one run are robust.
        info["load_average_1m_at_start"] = os.getloadavg()[0]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def train_backbone_classifier(model: Any, common: list[str], name: str) -> dict[str, Any]:
    """Train the ``fashion-mnist`` preset with the architecture of ``model`` (a dense preset's
    ``ModelConfig``): the first stage of the dense benchmarks, whose best checkpoint their
    second stage fine-tunes from.

    Returns:
        ``{"checkpoint": Path, "run": str, "test_top1": float, "wall_time_s": float}``.
    """
    from internimage.train import PRESETS, Trainer, apply_overrides

    architecture = [f"model.name={model.name}"] + [
        f"model.{key}={','.join(map(str, value)) if isinstance(value, tuple) else value}"
        for key, value in model.architecture_overrides().items()
    ]
    result = Trainer(apply_overrides(
        PRESETS["fashion-mnist"], [*common, f"name={name}", *architecture]
    )).fit()
    return {"checkpoint": result.best_checkpoint, "run": str(result.run_dir),
            "test_top1": result.best_metric, "wall_time_s": round(result.total_time_s, 1)}


def time_backends(forward: Any, images: int, repeats: int) -> dict[str, Any]:
    """Images/s of ``forward()`` (a no-grad forward pass over ``images`` images) with the numba
    and the reference DCNv3 operator, in this process: one warm-up pass each (kernel
    compilation, allocator), then ``repeats`` timed ones, the fastest counting.

    Returns:
        ``{backend: {"seconds": [...], "images_per_s": float}}`` for each available backend,
        plus ``"speedup"`` (numba over reference) when both ran.
    """
    import time

    import torch

    from internimage.ops import available_backends, use_backend

    out: dict[str, Any] = {}
    for backend in ("numba", "reference"):
        if backend not in available_backends():
            continue
        with use_backend(backend), torch.no_grad():
            forward()
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                forward()
                times.append(time.perf_counter() - started)
        out[backend] = {"seconds": times, "images_per_s": images / min(times)}
    if "numba" in out and "reference" in out:
        out["speedup"] = out["numba"]["images_per_s"] / out["reference"]["images_per_s"]
    return out


def add_dense_arguments(parser: Any, results: Path) -> None:
    """The options of the dense benchmarks (segmentation, detection)."""
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="extra config overrides")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--backbone", type=Path, default=None, metavar="CHECKPOINT",
                       help="classifier to start from (default: train one first)")
    start.add_argument("--from-scratch", action="store_true", help="no backbone pre-training")
    parser.add_argument("--inference-only", action="store_true")
    parser.add_argument("--output-dir", type=Path, default=results)
    parser.add_argument("--tag", default="")


def train_dense(preset: str, args: Any, name: str, record: dict[str, Any]) -> tuple[Any, Any, Any]:
    """The two training stages of a dense benchmark: a Fashion-MNIST classifier with the
    preset's architecture (unless ``--backbone`` or ``--from-scratch``), then ``preset`` from
    its stem and stages. Adds ``record["backbone"]`` when the classifier is trained here.

    Returns:
        ``(result of the dense run, its config, the backbone checkpoint or None)``; the seconds
        of the classifier stage are ``record["backbone"]["wall_time_s"]``.
    """
    from internimage.train import PRESETS, Trainer, apply_overrides

    common = ["device=cpu", "output_dir=runs", "progress=false"]
    assignments = [*common, f"name={name}"]
    if args.epochs is not None:
        assignments.append(f"schedule.epochs={args.epochs}")
    config = apply_overrides(PRESETS[preset], assignments + args.overrides)
    backbone = args.backbone
    if backbone is None and not args.from_scratch:
        classifier = train_backbone_classifier(config.model, common, f"{name}-backbone")
        backbone = classifier.pop("checkpoint")
        record["backbone"] = classifier
    if backbone is not None:
        config = apply_overrides(config, [f"model.finetune={backbone}"])
    return Trainer(config).fit(), config, backbone


def backbone_line(record: dict[str, Any], backbone: Any) -> str:
    """How the dense run started, for the results' Markdown."""
    if "backbone" in record:
        return ("- backbone: trained first as a Fashion-MNIST classifier "
                f"({record['backbone']['test_top1']:.2f}% test top-1, "
                f"{record['backbone']['wall_time_s'] / 60:.1f} min)")
    return f"- backbone: from {backbone}" if backbone is not None else "- backbone: from scratch"


def write_results(
    output_dir: Path, stem: str, record: dict[str, Any], md: list[str], command: str
) -> None:
    """Finish the Markdown with the machine, versions and command; write ``stem``.json/.md."""
    import json

    from internimage.files import atomic_write_text

    machine = record["machine"]
    md = [
        *md,
        f"- machine: {machine['cpu']} ({machine['cpu_count']} logical cores), load "
        f"{machine.get('load_average_1m_at_start', 'n/a')} at start",
        f"- versions: {', '.join(f'{k} {v}' for k, v in record['versions'].items())}",
        "",
        f"Details: {stem}.json. Command:",
        "",
        f"    {command}",
        "",
    ]
    atomic_write_text(output_dir / f"{stem}.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(output_dir / f"{stem}.md", "\n".join(md))
