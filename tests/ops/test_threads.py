"""The numba kernels follow torch's thread count."""

from __future__ import annotations

import numba
import pytest
import torch

from internimage.ops import dcnv3


@pytest.fixture
def restore_threads():  # type: ignore[no-untyped-def]
    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    yield
    torch.set_num_threads(torch_threads)
    numba.set_num_threads(numba_threads)


def _forward_and_backward() -> None:
    x = torch.randn(1, 4, 4, 4, requires_grad=True)
    offset = torch.zeros(1, 4, 4, 18)
    mask = torch.full((1, 4, 4, 9), 1 / 9)
    dcnv3(x, offset, mask, group=1).sum().backward()


def test_kernels_take_torch_thread_count(restore_threads) -> None:  # type: ignore[no-untyped-def]
    most = numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(most)
    torch.set_num_threads(1)
    _forward_and_backward()
    assert numba.get_num_threads() == 1
    # More torch threads than numba's pool has: numba uses its whole pool.
    torch.set_num_threads(most + 1)
    _forward_and_backward()
    assert numba.get_num_threads() == most
