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
    for name in packages:
        try:
            versions[name] = importlib.import_module(name).__version__
        except ImportError:
            pass
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
    import torch  # after the caller has set OMP_WAIT_POLICY

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
