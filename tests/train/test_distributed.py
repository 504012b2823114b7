"""Data-parallel training with two CPU processes (gloo) equals one process with the same global
batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_settings import PARALLEL_SETTINGS, free_port, set_args, step_losses

from internimage.errors import DeviceError
from internimage.train import (
    GlobalBatchNorm2d,
    ShardedBatchSampler,
    Trainer,
    apply_overrides,
    load_training_checkpoint,
)
from internimage.train.config import PRESETS
from internimage.train.distributed import resolve_device


def test_sharded_batches_partition_the_global_batch() -> None:
    single = ShardedBatchSampler(20, 8, seed=3)
    shards = [ShardedBatchSampler(20, 8, rank=r, world_size=2, seed=3) for r in range(2)]
    for epoch in (0, 1):
        for sampler in (single, *shards):
            sampler.set_epoch(epoch)
        joined = [a + b for a, b in zip(*[list(s) for s in shards], strict=True)]
        assert joined == list(single)
        assert len(joined) == 2  # incomplete last batch dropped
    resumed = ShardedBatchSampler(20, 8, seed=3)
    resumed.set_epoch(1, start_batch=1)
    full = ShardedBatchSampler(20, 8, seed=3)
    full.set_epoch(1)
    assert list(resumed) == list(full)[1:]


def _batchnorm_worker(rank: int, port: int, x: torch.Tensor, queue: mp.Queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        bn = GlobalBatchNorm2d(3)
        with torch.no_grad():
            bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        part = x[rank * 3 : (rank + 1) * 3].clone().requires_grad_(True)
        out = bn(part)
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        # As numpy arrays: tensors would travel as shared memory that dies with this process.
        queue.put((rank, *(t.detach().numpy().copy() for t in (
            out, part.grad, bn.running_mean, bn.running_var, bn.weight.grad))))
    finally:
        dist.destroy_process_group()


def test_global_batchnorm_matches_batchnorm_over_the_whole_batch() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, 4) * 3 + 1
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = free_port()
    procs = [context.Process(target=_batchnorm_worker, args=(r, port, x, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = {}
    for _ in procs:
        rank, *arrays = queue.get(timeout=120)
        results[rank] = [torch.from_numpy(a) for a in arrays]
    for p in procs:
        p.join(timeout=60)
    reference = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
    whole = x.clone().requires_grad_(True)
    out = reference(whole)
    weights = torch.cat([torch.arange(3 * 48).view(3, 3, 4, 4)] * 2).float()
    (out * weights).sum().backward()
    got_out = torch.cat([results[0][0], results[1][0]])
    got_grad = torch.cat([results[0][1], results[1][1]])
    torch.testing.assert_close(got_out, out.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, whole.grad, rtol=1e-4, atol=1e-5)
    for rank in (0, 1):
        torch.testing.assert_close(results[rank][2], reference.running_mean)
        torch.testing.assert_close(results[rank][3], reference.running_var)
    # Each process holds the gradient of its own part of the loss; DDP sums them (as a mean).
    torch.testing.assert_close(results[0][4] + results[1][4], reference.weight.grad, rtol=1e-4,
                               atol=1e-4)


def _single_process_run(tmp_path: Path) -> Path:
    """Train PARALLEL_SETTINGS in this process; returns the run folder."""
    result = Trainer(
        apply_overrides(PRESETS["fashion-mnist"],
                        PARALLEL_SETTINGS + [f"output_dir={tmp_path}", "name=single"])
    ).fit()
    return result.run_dir


def _two_process_run(tmp_path: Path, name: str, extra: list[str], timeout: int) -> str:
    """Train PARALLEL_SETTINGS (+ ``extra``) with torchrun, 2 processes of 8 images each, into
    ``tmp_path / name``; returns the output."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        f"--master_port={free_port()}", "-m", "internimage.cli.main", "train",
        *set_args(PARALLEL_SETTINGS + extra), "--batch-size", "8",
        "--output-dir", str(tmp_path), "--name", name,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_two_process_ddp_equals_one_process(tmp_path: Path) -> None:
    single_dir = _single_process_run(tmp_path)
    output = _two_process_run(tmp_path, "ddp", [], timeout=400)
    assert "2 process(es)" in output

    single_losses, ddp_losses = step_losses(single_dir), step_losses(tmp_path / "ddp")
    assert len(single_losses) == len(ddp_losses) == 8
    assert single_losses[0] - min(single_losses) > 0.05  # the run does learn
    # The runs differ only in summation order (gradients all-reduced across processes,
    # batch-norm sums per process then across, other thread counts): float32 rounding of about
    # 1e-7 relative per operation, grown over 8 steps to about 1e-6. 1e-4 relative still fails for
    # a real difference (a wrong shard, per-process batch norm: changes of 1e-2 or more).
    torch.testing.assert_close(
        torch.tensor(ddp_losses), torch.tensor(single_losses), rtol=1e-4, atol=1e-5
    )
    expected = load_training_checkpoint(single_dir / "last.pt")["model"]
    got = load_training_checkpoint(tmp_path / "ddp" / "last.pt")["model"]
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        if value.is_floating_point():
            torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-5, msg=name)
        else:
            assert torch.equal(got[name], value), name


@pytest.mark.slow
def test_two_process_fsdp_equals_one_process(tmp_path: Path) -> None:
    """FSDP (fully_shard per block, gloo on CPU) trains, checkpoints full weights, and follows the
    single-process losses like DDP does."""
    single_dir = _single_process_run(tmp_path)
    _two_process_run(tmp_path, "fsdp", ["strategy=fsdp"], timeout=600)
    state = load_training_checkpoint(tmp_path / "fsdp" / "last.pt")
    assert state["global_step"] == 8
    expected = load_training_checkpoint(single_dir / "last.pt")["model"]
    assert state["model"].keys() == expected.keys()
    # Same justification as for DDP above.
    torch.testing.assert_close(
        torch.tensor(step_losses(tmp_path / "fsdp")), torch.tensor(step_losses(single_dir)),
        rtol=1e-4, atol=1e-5,
    )


def test_device_resolution_follows_the_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", local_rank=3) == torch.device("cpu")
    assert resolve_device("cpu", local_rank=3) == torch.device("cpu")
    with pytest.raises(RuntimeError, match="'cuda' requested but CUDA is not available"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda", 0)


@pytest.mark.parametrize(("spec", "local_rank"), [("auto", 2), ("cuda", 2), ("cuda:5", 0)])
def test_more_processes_than_gpus_name_the_problem(
    monkeypatch: pytest.MonkeyPatch, spec: str, local_rank: int
) -> None:
    # Without this check CUDA fails later with "invalid device ordinal" and no hint at the cause.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DeviceError, match=r"only 2 CUDA device\(s\) are visible.*nproc_per_node"):
        resolve_device(spec, local_rank=local_rank)
