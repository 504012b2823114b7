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


def machine_info(device: Any) -> dict[str, Any]:
    """Where a benchmark ran: platform, CPU, threads, load at start, and the GPU when one is used.

    Args:
        device: The ``torch.device`` the benchmark computes on.
    """
    import torch  # after the caller has set OMP_WAIT_POLICY

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
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
