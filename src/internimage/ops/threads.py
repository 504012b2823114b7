"""The numba kernels use as many threads as torch: one setting for both thread pools.

numba sizes its pool by the number of cores (``NUMBA_NUM_THREADS``), whatever
``torch.set_num_threads`` or ``OMP_NUM_THREADS`` say. Where several single-threaded processes
share the cores (``torchrun --nproc_per_node N`` sets ``OMP_NUM_THREADS=1``), numba's extra
threads then compete with the other processes. Two such processes on two cores, each with one
torch thread, took 2.3-2.9 s per training step of InternImage-atto (depths 2-2-6-2, 64 px,
batch 64) with torch imported first (numba's idle threads then spin) and about 0.8 s with
``internimage`` imported first; with both measures below, 0.34-0.44 s.

Two measures: :func:`size_numba_pool` gives numba's pool torch's thread count when numba loads
(the kernels load it on first use), unless ``NUMBA_NUM_THREADS`` is set; and
:func:`match_torch_threads`, before every launch, follows later changes of torch's count within
that pool.
"""

from __future__ import annotations

import os
import sys

import torch

__all__ = ["match_torch_threads", "size_numba_pool"]


def size_numba_pool() -> None:
    """Before numba is imported: size its pool by torch's current thread count.

    Leaves a ``NUMBA_NUM_THREADS`` that the user set alone, and does nothing once numba is
    loaded (its pool size is read at import). A later ``torch.set_num_threads`` above this count
    gives the kernels at most this many threads.
    """
    if "numba" in sys.modules or "NUMBA_NUM_THREADS" in os.environ:
        return
    os.environ["NUMBA_NUM_THREADS"] = str(max(1, torch.get_num_threads()))


def match_torch_threads() -> None:
    """Set numba's thread count for the calling thread to torch's (at most numba's pool size).

    Called before every numba kernel launch; the check costs about a microsecond.
    """
    import numba

    wanted = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != wanted:
        numba.set_num_threads(wanted)
