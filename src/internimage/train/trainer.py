"""The training loop: data, model, AdamW + cosine schedule, EMA, mixed precision, checkpoints."""

from __future__ import annotations

import dataclasses
import inspect
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from internimage.errors import ConfigError, DataError, RunExistsError
from internimage.files import remove_stale_temporaries
from internimage.train.checkpoint import (
    CHECKPOINT_FORMAT,
    atomic_save,
    capture_rng_state,
    load_training_checkpoint,
    restore_rng_state,
)
from internimage.train.config import (
    TrainConfig,
    config_from_dict,
    config_to_dict,
    save_config,
)
from internimage.train.distributed import (
    DistributedContext,
    ShardedBatchSampler,
    all_reduce_sum,
    convert_batchnorm,
    init_distributed,
    resolve_device,
    shutdown_distributed,
)
from internimage.train.ema import ModelEma
from internimage.train.launch import (
    LOCAL_WORKERS_ENV,
    local_worker_count,
    resolve_processes,
    run_local_workers,
)
from internimage.train.metrics import MetricLog, plot_curves
from internimage.train.precision import autocast_context, resolve_amp
from internimage.train.schedule import WarmupCosineSchedule, scaled_lr
from internimage.train.tasks import Task, create_task, without_starting_weights

__all__ = ["RUN_FILES", "RunResult", "Trainer", "claim_run_dir"]

#: What a run writes into its folder; any of them there means the folder holds a run.
RUN_FILES = ("config.json", "last.pt", "best.pt", "metrics.csv", "train_steps.csv", "curves.png")
_TENSORBOARD_DIR = "tensorboard"


def claim_run_dir(run_dir: Path, *, overwrite: bool) -> None:
    """Make ``run_dir`` ready for a new run: refuse one that holds a run unless ``overwrite``,
    which deletes that run's files (other files are left alone).

    Raises:
        RunExistsError: ``run_dir`` holds a run and ``overwrite`` is False.
    """
    present = [name for name in RUN_FILES if (run_dir / name).exists()]
    if not present:
        return
    if not overwrite:
        raise RunExistsError(
            f"run folder {run_dir} already holds a run ({', '.join(present)}); continue it with "
            f"--resume {run_dir}, choose another --name, or replace it with --overwrite"
        )
    for name in present:
        (run_dir / name).unlink()
    shutil.rmtree(run_dir / _TENSORBOARD_DIR, ignore_errors=True)


@dataclass(frozen=True)
class RunResult:
    """What a finished run produced."""

    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path
    metrics_csv: Path
    plot: Path
    final: dict[str, float]
    #: Name of the metric that decided ``best.pt`` (``top1``, ``mIoU``); ``final`` holds it as
    #: ``val_<name>``.
    main_metric: str
    #: Its best value over the run.
    best_metric: float
    #: Seconds this call of :meth:`Trainer.fit` took.
    wall_time_s: float
    #: Seconds of the whole run: ``wall_time_s`` plus, for a resumed run, the time of the earlier
    #: calls up to the checkpoint it resumed from (work after that checkpoint was redone here).
    total_time_s: float


def _echo_stdout(message: str) -> None:
    print(message, flush=True)


def _format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Trainer:
    """One training run (single process, or one process of a torchrun job).

    With ``config.processes`` above 1 (or ``auto`` on a multi-core CPU), :meth:`fit` runs the
    training in that many local worker processes that share each batch, and returns the result
    of the first; their progress lines reach ``echo`` here.

    Args:
        config: The run settings.
        resume: ``last.pt`` (or a run folder holding one) to continue from exactly where it
            stopped; its stored config is used, with ``config_overrides`` applied on top.
        config_overrides: Nested mapping applied to the resumed config (e.g. more epochs).
        echo: Where progress lines go (rank 0 only).
        overwrite: Replace the files of an earlier run in the run folder
            (``output_dir/name``). Without it a new run refuses a folder that holds a run.

    Raises:
        RunExistsError: (from :meth:`fit`) The run folder holds a run and ``overwrite`` is off.
    """

    def __init__(
        self,
        config: TrainConfig | None = None,
        *,
        resume: str | Path | None = None,
        config_overrides: dict[str, Any] | None = None,
        echo: Callable[[str], None] = _echo_stdout,
        overwrite: bool = False,
    ) -> None:
        self.resume_state: dict[str, Any] | None = None
        if resume is not None:
            if overwrite:
                raise ConfigError("resuming a run and overwriting it exclude each other")
            path = Path(resume)
            if path.is_dir():
                path = path / "last.pt"
            self.resume_state = load_training_checkpoint(path)
            self._resume_path: Path | None = path
            config = config_from_dict(self.resume_state["config"])
            if config_overrides:
                config = config_from_dict(config_overrides, base=config)
            self.run_dir: Path | None = path.parent
        else:
            if config is None:
                raise ValueError("give a config or a checkpoint to resume from")
            self.run_dir = None
            self._resume_path = None
        self._config_overrides = config_overrides
        self.config = config
        self.echo = echo
        self.overwrite = overwrite

    # ----------------------------------------------------------------------------------- setup
    def _say(self, message: str) -> None:
        if self.ctx.is_main:
            self.echo(message)

    def _run_name(self) -> str:
        return self.config.name or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")

    def _choose_run_dir(self) -> Path:
        """The run folder, the same on every process; a new run claims it (rank 0 decides)."""
        if self.run_dir is not None:
            return self.run_dir
        name, problem = self._run_name(), None
        if self.ctx.is_main:
            try:
                claim_run_dir(Path(self.config.output_dir) / name, overwrite=self.overwrite)
            except RunExistsError as error:
                problem = str(error)
        if self.ctx.enabled:
            box = [name, problem]
            dist.broadcast_object_list(box, src=0)
            name, problem = box
        if problem is not None:
            raise RunExistsError(problem)
        return Path(self.config.output_dir) / name

    def _loader(self, dataset: Dataset, sampler: ShardedBatchSampler, seed: int) -> DataLoader:
        cfg = self.config.data
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=cfg.num_workers,
            collate_fn=self.task.collate,
            pin_memory=self.ctx.device.type == "cuda",
            persistent_workers=cfg.num_workers > 0,
            # Its own generator, so worker seeding never draws from the global torch RNG that the
            # augmentation uses (and that checkpoints restore).
            generator=torch.Generator().manual_seed(seed),
        )

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not self.ctx.enabled:
            return model
        model = convert_batchnorm(model, self.ctx.device)
        if self.config.strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            from internimage.models.internimage import Block

            # One shard unit per block, then the rest of the network.
            for module in model.modules():
                if isinstance(module, Block):
                    fully_shard(module)
            fully_shard(model)
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
        # No buffer broadcast before each forward: the only buffers are batch-norm statistics,
        # which the cross-process batch norms above keep equal on every process already.
        # (torch 2.13 renamed the option.)
        no_buffer_sync = (
            {"forward_sync_buffers": False}
            if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            else {"broadcast_buffers": False}
        )
        # DDP compares each gradient's strides with its parameter's literally, and the CPU
        # convolutions give weight gradients that differ only in the strides of size-1
        # dimensions (the same memory order); the warning would print once per process.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        return DistributedDataParallel(model, device_ids=device_ids, **no_buffer_sync)

    # ------------------------------------------------------------------------------ state i/o
    def _model_state(self) -> dict[str, torch.Tensor]:
        if self.config.strategy == "fsdp" and self.ctx.enabled:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
            )

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return get_model_state_dict(self.model, options=options)
        return {k: v.detach().cpu() for k, v in self.net.state_dict().items()}

    def _optimizer_state(self) -> dict[str, Any]:
        if self.config.strategy == "fsdp" and self.ctx.enabled:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_optimizer_state_dict,
            )

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return get_optimizer_state_dict(self.model, self.optimizer, options=options)
        return self.optimizer.state_dict()

    def _load_states(self, state: dict[str, Any]) -> None:
        if self.config.strategy == "fsdp" and self.ctx.enabled:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
            set_model_state_dict(self.model, state["model"], options=options)
            set_optimizer_state_dict(
                self.model, self.optimizer, state["optimizer"], options=options
            )
        else:
            self.net.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        if len(rng) == self.ctx.world_size:
            restore_rng_state(rng[self.ctx.rank])
        else:
            self._say(
                f"warning: checkpoint was written by {len(rng)} processes, this run has "
                f"{self.ctx.world_size}; random streams are reseeded, so augmentation differs"
            )
            torch.manual_seed(self.config.seed + 7919 * self.ctx.rank + state["global_step"])

    def _save(
        self,
        path: Path,
        epoch: int,
        step_in_epoch: int,
        metrics: dict[str, Any],
        *,
        epoch_loss: tuple[float, int] = (0.0, 0),
    ) -> None:
        """Write a checkpoint (every process takes part; rank 0 writes).

        ``epoch_loss`` is this process's sum of the training losses of the current epoch's steps
        so far, and their count, for a checkpoint inside an epoch: a resumed run continues the
        sum, so that the epoch's mean loss covers all its steps.
        """
        # Every process holds the same count; the sums are averaged over the processes, as the
        # epoch's mean is at its end.
        loss_sum = self._mean_over_processes(epoch_loss[0])
        rng = capture_rng_state()
        if self.ctx.enabled:
            gathered: list[Any] = [None] * self.ctx.world_size
            dist.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        model_state = self._model_state()
        optimizer_state = self._optimizer_state()
        if not self.ctx.is_main:
            return
        payload = {
            "format": CHECKPOINT_FORMAT,
            "model": model_state,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": optimizer_state,
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": gathered,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": self.global_step,
            "epoch_loss_sum": loss_sum,
            "epoch_loss_steps": epoch_loss[1],
            "best_metric": self.best_metric,
            "main_metric": self.task.main_metric,
            # Run time up to this checkpoint, over every call that worked on the run.
            "train_time_s": self._earlier_time_s + time.perf_counter() - self._started,
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float | str)},
            "config": config_to_dict(self.config),
            "task": self.config.task,
            "model_name": self.config.model.name,
            **self.task.checkpoint_metadata(),
            "world_size": self.ctx.world_size,
        }
        atomic_save(payload, path)

    # ---------------------------------------------------------------------------------- run
    def fit(self) -> RunResult:
        """Train (or continue) to the configured number of epochs; returns the outputs."""
        cfg = self.config
        if LOCAL_WORKERS_ENV not in os.environ:
            # Only the device type matters here; init_distributed picks the index below.
            device = resolve_device(cfg.device)
            workers = resolve_processes(cfg, device)
            if workers > 1:
                return self._fit_in_workers(workers, device)
        self._started = time.perf_counter()
        self._earlier_time_s = 0.0
        self.ctx: DistributedContext = init_distributed(cfg.device)
        device = self.ctx.device
        # Before anything slow, so that a folder that cannot be used is reported at once.
        run_dir = self._choose_run_dir()
        self.run_dir = run_dir
        if self.ctx.is_main:
            # Left by a run killed while it wrote a file; nothing reads them.
            remove_stale_temporaries(run_dir)
        # Same seed everywhere for the weights; DDP/FSDP also broadcast rank 0's.
        torch.manual_seed(cfg.seed)
        # A resumed run's weights all come from its checkpoint: its starting weights (released
        # or fine-tuning ones) are not loaded again, and need not exist any more.
        self.task: Task = create_task(
            without_starting_weights(cfg) if self.resume_state is not None else cfg
        )
        train_set, val_set = self.task.build_datasets()
        self.classes = self.task.classes
        net = self.task.build_model().to(device)
        self.net = net
        self.ema = (
            ModelEma(net, cfg.ema_decay, warmup=cfg.ema_warmup)
            if cfg.ema_decay is not None else None
        )
        if self.ema is not None and self.ctx.enabled and cfg.strategy == "fsdp":
            raise ConfigError(
                "ema_decay is not supported with strategy='fsdp'; set ema_decay=none"
            )
        self.amp_dtype, needs_scaler = resolve_amp(cfg.amp, device)
        self.scaler = torch.amp.GradScaler(device.type) if needs_scaler else None

        # Local workers share each batch; torchrun processes each take a whole one.
        global_batch = cfg.batch_size // local_worker_count() * self.ctx.world_size
        total_batch = global_batch * cfg.accum_steps
        sampler = ShardedBatchSampler(
            len(train_set), global_batch, rank=self.ctx.rank, world_size=self.ctx.world_size,
            seed=cfg.seed,
        )
        steps_per_epoch = sampler.batches_per_epoch() // cfg.accum_steps
        if steps_per_epoch < 1:
            raise ConfigError(
                f"{len(train_set)} training images give no full step of {total_batch} images; "
                f"lower batch_size or accum_steps"
            )
        # Counted in steps (ADE20K's iterations) or in epochs; the last epoch of a step count
        # may end early.
        total_steps = cfg.schedule.steps or steps_per_epoch * cfg.schedule.epochs
        num_epochs = -(-total_steps // steps_per_epoch)
        self._num_epochs = num_epochs
        base_lr = scaled_lr(cfg.optim.lr, total_batch)

        self.model = self._wrap(net)
        # Groups are built on the wrapped parameters (FSDP replaces them by sharded ones).
        groups = self.task.param_groups(net)
        # The fused AdamW updates every parameter in one kernel; torch's default on CPU is a
        # Python loop over the parameters, which costs about 5x as long (25 ms a step for atto on
        # one core). FSDP's sharded parameters take the multi-tensor form instead.
        sharded = cfg.strategy == "fsdp" and self.ctx.enabled
        self.optimizer = torch.optim.AdamW(
            groups, lr=base_lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
            **({"foreach": True} if sharded else {"fused": True}),
        )
        self.schedule = WarmupCosineSchedule(
            self.optimizer,
            base_lr=base_lr,
            warmup_lr=scaled_lr(cfg.schedule.warmup_lr, total_batch),
            min_lr=scaled_lr(cfg.schedule.min_lr, total_batch),
            warmup_steps=(cfg.schedule.warmup_steps if cfg.schedule.warmup_steps is not None
                          else min(total_steps,
                                   int(round(cfg.schedule.warmup_epochs * steps_per_epoch)))),
            total_steps=total_steps,
            decay=cfg.schedule.decay,
            power=cfg.schedule.power,
            milestones=[int(round(m * steps_per_epoch)) for m in cfg.schedule.milestones],
            gamma=cfg.schedule.gamma,
        )
        self.task.setup(device)

        # Different augmentation per process; the resumed state overrides this below.
        torch.manual_seed(cfg.seed + 7919 * self.ctx.rank)
        self.global_step, self.best_metric = 0, float("-inf")
        start_epoch, start_step = 0, 0
        if self.resume_state is not None:
            state = self.resume_state
            self._load_states(state)
            self.global_step = int(state["global_step"])
            # Checkpoints of classification runs before tasks existed name it best_top1.
            self.best_metric = float(state.get("best_metric", state.get("best_top1")))
            start_epoch, start_step = int(state["epoch"]), int(state["step_in_epoch"])
            # Checkpoints from before the run time was recorded count as zero.
            self._earlier_time_s = float(state.get("train_time_s", 0.0))

        paths = {
            "last": run_dir / "last.pt",
            "best": run_dir / "best.pt",
            "epochs": run_dir / "metrics.csv",
            "steps": run_dir / "train_steps.csv",
            "plot": run_dir / "curves.png",
        }
        if self.ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.json")
            epochs_log = MetricLog(paths["epochs"], tensorboard_dir=run_dir / _TENSORBOARD_DIR)
            steps_log = MetricLog(paths["steps"])
            epochs_log.truncate_after(self.global_step)
            steps_log.truncate_after(self.global_step)
        n_params = sum(p.numel() for p in net.parameters())
        self._say(
            f"training {cfg.model.name} ({n_params / 1e6:.2f}M parameters) on {cfg.data.dataset}: "
            f"{len(train_set)} train / {len(val_set)} validation images, {len(self.classes)} "
            f"classes, {num_epochs} epochs x {steps_per_epoch} steps"
            + (f" ({total_steps} in all)" if total_steps != num_epochs * steps_per_epoch else "")
            + ", total batch "
            f"{total_batch}, lr {base_lr:.3g}, {self.ctx.world_size} process(es) on {device}, "
            f"run folder {run_dir}"
            + (f" (resuming at epoch {start_epoch + 1} step {start_step})" if start_step or
               start_epoch else "")
        )

        train_loader = self._loader(train_set, sampler, cfg.seed + self.ctx.rank)
        val_sampler = ShardedBatchSampler(
            len(val_set), global_batch, rank=self.ctx.rank, world_size=self.ctx.world_size,
            shuffle=False, drop_last=False,
        )
        val_loader = self._loader(val_set, val_sampler, cfg.seed)
        eval_model = self.model if (cfg.strategy == "fsdp" and self.ctx.enabled) else net
        metrics: dict[str, Any] = {}
        show_bar = cfg.progress and self.ctx.is_main and sys.stderr.isatty()
        run_started = time.perf_counter()
        steps_at_start = self.global_step

        for epoch in range(start_epoch, num_epochs):
            # The last epoch of a run counted in steps stops at its last step.
            epoch_end = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
            first = start_step if epoch == start_epoch else 0
            sampler.set_epoch(epoch, start_batch=first * cfg.accum_steps)
            batches = iter(train_loader)
            self.model.train()
            bar = None
            if show_bar:
                from tqdm import tqdm

                bar = tqdm(
                    total=epoch_end, initial=first, desc=f"epoch {epoch + 1}/{num_epochs}",
                    unit="step", dynamic_ncols=True, leave=False,
                )
            epoch_loss, epoch_steps = 0.0, 0
            if epoch == start_epoch and first and self.resume_state is not None:
                # The epoch's steps before the checkpoint count towards its mean training loss.
                epoch_loss = float(self.resume_state.get("epoch_loss_sum", 0.0))
                epoch_steps = int(self.resume_state.get("epoch_loss_steps", 0))
            for step_in_epoch in range(first, epoch_end):
                lr = self.schedule.apply()
                loss_value = self._train_step(batches, device)
                self.schedule.step()
                self.global_step += 1
                epoch_loss += loss_value
                epoch_steps += 1
                if bar is not None:
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
                    bar.update(1)
                if self.global_step % cfg.log_every == 0 or step_in_epoch == epoch_end - 1:
                    # Averaged over the processes only where it is logged: every collective is
                    # a point where the processes wait for each other.
                    loss_value = self._mean_over_processes(loss_value)
                    if self.ctx.is_main:
                        steps_log.append(
                            {"step": self.global_step, "epoch": epoch + 1, "lr": lr,
                             "train_loss": loss_value}
                        )
                    if bar is None:
                        done = self.global_step - steps_at_start
                        elapsed = time.perf_counter() - run_started
                        left = (total_steps - self.global_step) * elapsed / max(done, 1)
                        self._say(
                            f"epoch {epoch + 1}/{num_epochs} step "
                            f"{step_in_epoch + 1}/{epoch_end} loss {loss_value:.4f} "
                            f"lr {lr:.2e} {done * total_batch / max(elapsed, 1e-9):.0f} img/s "
                            f"elapsed {_format_duration(elapsed)} eta {_format_duration(left)}"
                        )
                if (cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0
                        and step_in_epoch < epoch_end - 1):
                    self._save(
                        paths["last"], epoch, step_in_epoch + 1, metrics,
                        epoch_loss=(epoch_loss, epoch_steps),
                    )
            if bar is not None:
                bar.close()

            epoch_loss = self._mean_over_processes(epoch_loss)
            last_epoch = epoch == num_epochs - 1
            if (epoch + 1) % cfg.eval_every == 0 or last_epoch:
                metrics = self._evaluate_all(eval_model, val_loader, epoch, epoch_loss, epoch_steps)
                if self.ctx.is_main:
                    epochs_log.append(metrics)
                score = metrics[f"val_{self.task.main_metric}"]
                improved = score > self.best_metric
                self.best_metric = max(self.best_metric, score)
                self._save(paths["last"], epoch + 1, 0, metrics)
                if improved:
                    self._save(paths["best"], epoch + 1, 0, metrics)
            else:
                self._save(paths["last"], epoch + 1, 0, metrics)

        wall = time.perf_counter() - self._started
        if self.ctx.is_main:
            plot_curves(
                steps_log, epochs_log, paths["plot"],
                metrics=self._curve_metrics(), metric_label=self.task.curve_label,
            )
            epochs_log.close()
        if not metrics and self.resume_state is not None:
            metrics = dict(self.resume_state.get("metrics", {}))
        return RunResult(
            run_dir=run_dir,
            last_checkpoint=paths["last"],
            best_checkpoint=paths["best"],
            metrics_csv=paths["epochs"],
            plot=paths["plot"],
            final=metrics,
            main_metric=self.task.main_metric,
            best_metric=self.best_metric,
            wall_time_s=wall,
            total_time_s=self._earlier_time_s + wall,
        )

    def _fit_in_workers(self, workers: int, device: torch.device) -> RunResult:
        """:meth:`fit` in ``workers`` local processes (see :mod:`internimage.train.launch`)."""
        if self.resume_state is not None:
            kwargs: dict[str, Any] = {
                "resume": self._resume_path, "config_overrides": self._config_overrides,
            }
        else:
            # The folder is named and claimed here, so that an unusable one is reported before
            # any worker starts, and the workers (which check again) find it claimed.
            self.config = dataclasses.replace(self.config, name=self._run_name())
            self.run_dir = Path(self.config.output_dir) / self.config.name
            claim_run_dir(self.run_dir, overwrite=self.overwrite)
            kwargs = {"config": self.config}
        result = run_local_workers(workers, fit_in_worker, kwargs, self.echo)
        self.ctx = DistributedContext(0, workers, 0, device)
        self.run_dir = result.run_dir
        return result

    def _train_step(self, batches: Any, device: torch.device) -> float:
        """One optimiser step over ``accum_steps`` micro-batches; returns this process's loss."""
        cfg = self.config
        loss_sum = torch.zeros((), dtype=torch.float64)
        for micro in range(cfg.accum_steps):
            batch = next(batches)
            if batch[0].shape[0] == 0:
                # Every file of the batch failed to decode (each was named in a warning).
                raise DataError(
                    f"no image of a training batch could be read (step {self.global_step + 1}); "
                    "fix or remove the unreadable files named in the warnings above"
                )
            sync = micro == cfg.accum_steps - 1 or not hasattr(self.model, "no_sync")
            context = self.model.no_sync() if not sync else nullcontext()
            with context:
                losses = self.task.training_losses(
                    self.model, batch, device, lambda: autocast_context(device, self.amp_dtype)
                )
                loss = losses["loss"] / cfg.accum_steps
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"training loss became {float(loss)} at step {self.global_step}; lower "
                        f"optim.lr or check the data"
                    )
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            loss_sum += float(loss.detach())
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if cfg.optim.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.net)
        return float(loss_sum)

    def _mean_over_processes(self, value: float) -> float:
        """Mean of ``value`` over the processes (every process must call it at the same point)."""
        if not self.ctx.enabled:
            return value
        # On the training device: nccl reduces device tensors only.
        total = torch.tensor([value], dtype=torch.float64, device=self.ctx.device)
        return float(all_reduce_sum(total)) / self.ctx.world_size

    def _curve_metrics(self) -> tuple[tuple[str, str], ...]:
        curves = tuple((f"val_{key}", label) for key, label in self.task.curve_metrics)
        if self.ema is not None:
            main = dict(self.task.curve_metrics)[self.task.main_metric]
            curves += ((f"ema_{self.task.main_metric}", f"EMA {main}"),)
        return curves

    def _evaluate_all(
        self,
        model: nn.Module,
        loader: DataLoader,
        epoch: int,
        epoch_loss: float,
        epoch_steps: int,
    ) -> dict[str, Any]:
        device = self.ctx.device
        result = self.task.evaluate(model, loader, device, self.amp_dtype)
        row: dict[str, Any] = {
            "step": self.global_step,
            "epoch": epoch + 1,
            "train_loss": epoch_loss / max(epoch_steps, 1),
            **{f"val_{key}": value for key, value in result.items()},
        }
        message = (
            f"epoch {epoch + 1}/{self._num_epochs}: train loss {row['train_loss']:.4f}, "
            f"validation" + (f" loss {result['loss']:.4f}" if "loss" in result else "")
            + f" {self.task.describe(result)}"
        )
        if self.ema is not None:
            ema_result = self.task.evaluate(self.ema.module, loader, device, self.amp_dtype)
            row.update({f"ema_{key}": value for key, value in ema_result.items()})
            message += f", EMA {self.task.describe(ema_result)}"
        self._say(message)
        return row


def fit_in_worker(
    config: TrainConfig | None = None,
    resume: str | Path | None = None,
    config_overrides: dict[str, Any] | None = None,
) -> RunResult:
    """``Trainer(...).fit()`` in one of the local workers of :meth:`Trainer.fit` (run by
    :func:`internimage.train.launch.worker_main`), leaving the process group afterwards."""
    trainer = Trainer(config, resume=resume, config_overrides=config_overrides)
    try:
        return trainer.fit()
    finally:
        shutdown_distributed()
