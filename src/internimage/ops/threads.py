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

Waiting: numba's OpenMP layer is a second OpenMP runtime beside torch's. :func:`start_numba_pool`
starts it with passive waiting, so that its idle workers sleep instead of spinning on the cores
torch is working on; torch's own pool keeps its runtime's default (spin briefly, then sleep).
Passive waiting in torch's pool as well costs much more than it saves: on 2 cores (Intel Xeon,
torch 2.14) it made InternImage-atto training 1.9x slower (591 against 1130 images/s, 64 px,
batch 64, one process of two threads), atto + UperNet training 1.6x slower and InternImage-T
inference 1.15x slower than numba's pool alone waiting passively.
"""

from __future__ import annotations

import os
import sys

import torch

__all__ = ["match_torch_threads", "size_numba_pool", "start_numba_pool"]


def size_numba_pool() -> None:
    """Before numba is imported: size its pool by torch's current thread count.

    Leaves a ``NUMBA_NUM_THREADS`` that the user set alone, and does nothing once numba is
    loaded (its pool size is read at import). A later ``torch.set_num_threads`` above this count
    gives the kernels at most this many threads.
    """
    if "numba" in sys.modules or "NUMBA_NUM_THREADS" in os.environ:
        return
    os.environ["NUMBA_NUM_THREADS"] = str(max(1, torch.get_num_threads()))


def start_numba_pool() -> None:
    """Start numba's thread pool now, waiting passively unless ``OMP_WAIT_POLICY`` is set.

    An OpenMP runtime reads ``OMP_WAIT_POLICY`` once, when it loads; numba loads its threading
    layer when the pool starts. The variable is therefore set only while that happens and removed
    again, so that it reaches numba's runtime and nothing else: torch's runtime has read the
    environment already, and processes started later (training workers) start with their own
    defaults. A value the user set is left alone and applies to both runtimes.
    """
    import numba

    if "OMP_WAIT_POLICY" in os.environ:
        numba.get_num_threads()  # starts the pool
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        numba.get_num_threads()
    finally:
        del os.environ["OMP_WAIT_POLICY"]


def match_torch_threads() -> None:
    """Set numba's thread count for the calling thread to torch's (at most numba's pool size).

    Called before every numba kernel launch; the check costs about a microsecond.
    """
    import numba

    wanted = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != wanted:
        numba.set_num_threads(wanted)
