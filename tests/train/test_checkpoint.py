"""Atomic checkpoint writes and random-state capture."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from internimage.train import atomic_save, capture_rng_state, restore_rng_state


class _Unpicklable:
    def __reduce__(self) -> tuple:
        raise RuntimeError("cannot serialise this")


def test_failed_serialisation_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    atomic_save({"step": 1, "w": torch.ones(3)}, path)
    with pytest.raises(RuntimeError, match="cannot serialise"):
        atomic_save({"step": 2, "bad": _Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_failure_at_replace_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.pt"
    atomic_save({"step": 1}, path)

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"step": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # temp file removed


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    atomic_save({"rng": capture_rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(3), torch.rand(3), np.random.randn())
    state = torch.load(tmp_path / "rng.pt", weights_only=True)["rng"]
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(state)
    got = (random.random(), np.random.rand(3), torch.rand(3), np.random.randn())
    assert got[0] == expected[0] and got[3] == expected[3]
    np.testing.assert_array_equal(got[1], expected[1])
    assert torch.equal(got[2], expected[2])
