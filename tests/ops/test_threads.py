"""The numba kernels follow torch's thread count."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import numba
import pytest
import torch

from internimage.ops import dcnv3


@pytest.fixture
def restore_threads() -> Iterator[None]:
    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    yield
    torch.set_num_threads(torch_threads)
    numba.set_num_threads(numba_threads)


def _forward_and_backward() -> None:
    x = torch.randn(1, 4, 4, 4, requires_grad=True)
    offset = torch.zeros(1, 4, 4, 18)
    mask = torch.full((1, 4, 4, 9), 1 / 9)
    dcnv3(x, offset, mask, group=1).sum().backward()


def test_kernels_take_torch_thread_count(restore_threads: None) -> None:
    most = numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(most)
    torch.set_num_threads(1)
    _forward_and_backward()
    assert numba.get_num_threads() == 1
    # More torch threads than numba's pool has: numba uses its whole pool.
    torch.set_num_threads(most + 1)
    _forward_and_backward()
    assert numba.get_num_threads() == most


@pytest.mark.parametrize(("preset", "expected"), [(None, "1"), ("2", "2")])
def test_numba_pool_is_sized_by_torch_threads_unless_set(
    preset: str | None, expected: str
) -> None:
    """In a fresh process whose torch uses one thread, numba's pool gets one thread, unless
    NUMBA_NUM_THREADS says otherwise."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS")}
    if preset is not None:
        env["NUMBA_NUM_THREADS"] = preset
    script = (
        "import torch; torch.set_num_threads(1); "
        "from internimage.ops import dcnv3; "
        "dcnv3(torch.randn(1, 3, 3, 2), torch.zeros(1, 3, 3, 18), torch.ones(1, 3, 3, 9), "
        "group=1); "
        "import numba; print(numba.config.NUMBA_NUM_THREADS, numba.get_num_threads())"
    )
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, check=True)
    assert result.stdout.split() == [expected, "1"]


@pytest.mark.parametrize("preset", [None, "ACTIVE"])
def test_numba_pool_starts_with_the_kernels_and_leaves_the_wait_policy_as_found(
    preset: str | None,
) -> None:
    """Loading the kernels starts numba's pool (passive waiting is set only while it starts): the
    environment afterwards is what it was, so workers started later get their own defaults."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset is not None:
        env["OMP_WAIT_POLICY"] = preset
    script = (
        "import os; import torch; import internimage.ops.cpu_kernels; "
        "from numba.np.ufunc import parallel; "
        "print(parallel._is_initialized, os.environ.get('OMP_WAIT_POLICY', 'unset'))"
    )
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, check=True)
    assert result.stdout.split() == ["True", preset or "unset"]
