"""The numba kernels use as many threads as torch: one setting for both thread pools.

numba sizes its pool by the number of cores (``NUMBA_NUM_THREADS``), whatever
``torch.set_num_threads`` or ``OMP_NUM_THREADS`` say. Where several single-threaded processes
share the cores (``torchrun --nproc_per_node N`` sets ``OMP_NUM_THREADS=1``, and so does the
trainer's worker processes' environment), numba's extra threads then compete with the other
processes: on two cores, two processes took 2-8x longer per step than with one numba thread each.
"""

from __future__ import annotations

import numba
import torch

__all__ = ["match_torch_threads"]


def match_torch_threads() -> None:
    """Set numba's thread count for the calling thread to torch's (at most numba's pool size).

    Called before every numba kernel launch; the check costs about a microsecond.
    """
    wanted = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != wanted:
        numba.set_num_threads(wanted)
