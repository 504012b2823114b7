"""How the tests import a benchmark script (``benchmarks/`` is not a package).

Imported by test modules in any folder (pytest puts ``tests/`` on ``sys.path`` for its
``conftest.py``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["BENCHMARKS", "load_benchmark"]

#: The repository's benchmark folder.
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(filename: str) -> ModuleType:
    """``benchmarks/<filename>`` loaded as a module named after it."""
    path = BENCHMARKS / filename
    spec = importlib.util.spec_from_file_location(f"{path.stem}_benchmark_script", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Dataclasses resolve their annotations through sys.modules.
    sys.modules[spec.name] = module
    # As when it runs as a script, its folder is on the path for its helper module.
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module
