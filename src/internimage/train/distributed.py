"""Process groups, data sharding and batch-norm synchronisation for data-parallel training."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from internimage.errors import DeviceError

__all__ = [
    "DistributedContext",
    "GlobalBatchNorm2d",
    "ShardedBatchSampler",
    "all_reduce_sum",
    "convert_batchnorm",
    "init_distributed",
    "on_rank_zero_first",
    "resolve_device",
    "shutdown_distributed",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: rank, world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0, the process that writes files and prints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """Device for ``spec`` (``auto``: this process's GPU when CUDA is available, else CPU).

    Args:
        spec: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        local_rank: this process's index on its machine; picks the GPU for ``auto`` and ``cuda``.

    Raises:
        RuntimeError: a CUDA device is asked for and CUDA is not available.
        ValueError: the GPU index is not below the number of visible GPUs (more ``torchrun``
            processes per machine than GPUs, say).
    """
    if spec == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        device = torch.device("cuda", local_rank)
    else:
        try:
            device = torch.device(spec)
        except RuntimeError:
            raise DeviceError(
                f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N"
            ) from None
        if device.type != "cuda":
            return device
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {spec!r} requested but CUDA is not available; use --device cpu (or "
                f"auto)"
            )
        if device.index is None:
            device = torch.device("cuda", local_rank)
    visible = torch.cuda.device_count()
    if device.index >= visible:
        # CUDA's own message for this ("invalid device ordinal") comes later and names neither
        # the process nor the setting.
        raise DeviceError(
            f"device {spec!r} resolves to {device} for local rank {local_rank}, but only "
            f"{visible} CUDA device(s) are visible; start at most {visible} process(es) per "
            "machine (torchrun --nproc_per_node) or train on the CPU with device=cpu"
        )
    return device


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Without ``WORLD_SIZE`` > 1 in the environment this is a single process. The backend is nccl
    for CUDA devices and gloo for CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistributedContext(rank, world_size, local_rank, chosen)


def shutdown_distributed() -> None:
    """Leave the process group (no-op for a single process)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def on_rank_zero_first(action: Callable[[], object]) -> None:
    """Run ``action()`` on rank 0 while the other processes wait (one writer for shared files,
    such as a generated dataset); just run it in a single process."""
    distributed = dist.is_available() and dist.is_initialized()
    if not distributed or dist.get_rank() == 0:
        action()
    if distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes (in place); identity for a single process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes with a gradient: every process's input contributes to every output,
    so the gradient of an input is the sum of the output gradients of all processes."""

    @staticmethod
    def forward(ctx: object, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the batch of every process.

    ``torch.nn.SyncBatchNorm`` runs on accelerators only; this does the same on any device with
    autograd-aware all-reduces (gloo on CPU): mean and biased variance over all processes' images,
    the unbiased variance in the running statistics. Parameters and buffers keep BatchNorm2d's
    names, so state dicts are interchangeable.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Normalise ``[N, C, H, W]``."""
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        all_reduce = _AllReduceSum.apply
        if input.dim() != 4:
            raise ValueError(f"expected [N, C, H, W] input, got shape {tuple(input.shape)}")
        x = input.float()
        local_count = x.new_tensor([x.shape[0] * x.shape[2] * x.shape[3]], dtype=torch.float32)
        # Two passes (mean, then squared deviations) for the same accuracy as a local BatchNorm.
        sums = all_reduce(torch.cat([x.sum(dim=(0, 2, 3)), local_count]))
        count = sums[-1]
        mean = sums[:-1] / count
        centered = x - mean.view(1, -1, 1, 1)
        var = all_reduce(centered.square().sum(dim=(0, 2, 3))) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                if self.momentum is None:  # cumulative average, as BatchNorm2d
                    momentum = 1.0 / float(self.num_batches_tracked)
                else:
                    momentum = self.momentum
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        out = centered * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out.to(input.dtype)


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm2d by a cross-process one: SyncBatchNorm on CUDA, else
    :class:`GlobalBatchNorm2d`. Weights and running statistics are kept."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_to_global(module)


def _convert_to_global(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        replacement = GlobalBatchNorm2d(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats, device=module.weight.device if module.affine else None,
        )
        replacement.load_state_dict(module.state_dict())
        replacement.train(module.training)
        return replacement
    for name, child in module.named_children():
        module.add_module(name, _convert_to_global(child))
    return module


class ShardedBatchSampler(Sampler[list[int]]):
    """Batches of one shuffled order shared by all processes, each taking its slice.

    Epoch ``e`` uses the permutation of ``torch.Generator().manual_seed(seed + e)``; global batch
    ``b`` holds positions ``[b * B, (b + 1) * B)`` of it, and process ``r`` of ``W`` gets the
    ``r``-th of ``W`` equal slices. So one process with batch ``B`` sees exactly the images that
    ``W`` processes with ``B / W`` each see together, and a run resumed at batch ``b`` continues
    the same order. Incomplete last batches are dropped when training.

    Args:
        num_samples: Dataset length.
        global_batch: ``B``, divisible by ``world_size``.
        rank: This process.
        world_size: ``W``.
        seed: Base seed of the order.
        shuffle: False keeps the dataset order (evaluation).
        drop_last: Drop the incomplete last batch.
    """

    def __init__(
        self,
        num_samples: int,
        global_batch: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} not divisible by {world_size} processes")
        if drop_last and num_samples < global_batch:
            raise ValueError(
                f"dataset of {num_samples} images is smaller than the global batch {global_batch}"
            )
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Order of ``epoch``, starting at its batch ``start_batch`` (for resuming)."""
        self.epoch = epoch
        self.start_batch = start_batch

    def batches_per_epoch(self) -> int:
        """Global batches in one full epoch."""
        if self.drop_last:
            return self.num_samples // self.global_batch
        return -(-self.num_samples // self.global_batch)

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch

    def __iter__(self):
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        per_rank = self.global_batch // self.world_size
        for b in range(self.start_batch, self.batches_per_epoch()):
            batch = order[b * self.global_batch : (b + 1) * self.global_batch]
            if len(batch) < self.global_batch:
                # Last incomplete evaluation batch: split it as evenly as possible.
                yield batch[self.rank :: self.world_size]
            else:
                yield batch[self.rank * per_rank : (self.rank + 1) * per_rank]
