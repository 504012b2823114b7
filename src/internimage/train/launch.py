"""Local worker processes that share each batch: data parallelism on one machine's CPU cores.

On a CPU, one training process with N threads uses its cores poorly for small models: most
operations are too small to split well across threads, and the Python and autograd work between
them runs on one core. N single-threaded processes, each taking 1/N of every batch and averaging
gradients (DDP over gloo), can keep the cores busier. On two cores the gain is small and varies:
InternImage-atto's bare training steps at 64 px ran about 1.4x faster, but whole one-epoch runs
of the Fashion-MNIST main job (augmentation, synchronisation, evaluation and the workers'
start-up included) gave 0.89-1.06x (``benchmarks/results/train_workers.md``), and the whole
11-epoch main job about 1.1x. The run stays the same run:
the total batch, the learning rate and the order of the images do not depend on the number of
workers (see :class:`ShardedBatchSampler`); only float rounding and the augmentation's random
draws differ.

:meth:`Trainer.fit` starts the workers itself when ``TrainConfig.processes`` asks for more than
one, so every entry point (``internimage train``, the benchmarks, a user's script) gets them.
Under ``torchrun`` the processes are the launcher's and this module stays out of the way.

This module knows nothing of the trainer: a worker runs the function it is given (the trainer
gives its own), so that the two modules do not import each other.

Why not torch's elastic launcher (``torch.distributed.launcher.api.elastic_launch``, what
``torchrun`` runs)? Tried in its place (two workers, a function entry point, torch 2.14), it ends
the workers of a killed launcher too, but breaks what this module keeps: Ctrl-C makes every
worker print a ``SignalException`` traceback and the launcher raise ``SignalException``, not
``KeyboardInterrupt``; a failure arrives as ``ChildFailedError`` (the worker's error type, a
``UserError`` say, is lost) after torch's logger has printed the worker's traceback; rank 0's
lines bypass the caller's ``echo``; and its ``spawn`` start re-imports the caller's main script
in each worker (a script without a ``__main__`` guard ran again in them). A two-worker job with
one all-reduce took 3.4-3.6 s with it against 2.1-2.4 s here, on two cores.
"""

from __future__ import annotations

import json
import os
import pickle
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

if TYPE_CHECKING:
    from internimage.train.config import TrainConfig

#: What a worker's function returns (rank 0's value is the launcher's).
Result = TypeVar("Result")

__all__ = [
    "LOCAL_WORKERS_ENV",
    "exit_with_parent",
    "free_port",
    "local_worker_count",
    "resolve_processes",
    "WorkerFailedError",
    "run_local_workers",
]

#: Set in each worker's environment to the number of workers that share the batch.
LOCAL_WORKERS_ENV = "INTERNIMAGE_LOCAL_WORKERS"
#: Set in each worker's environment to the id of the process that started it.
_PARENT_PID_ENV = "INTERNIMAGE_LAUNCHER_PID"

# Fewer images than this per worker make the per-worker matrix products too small to gain.
_MIN_IMAGES_PER_WORKER = 32


# cgroup v2 CPU limit of this process's container: "QUOTA PERIOD" or "max PERIOD".
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def _cgroup_cpu_limit(path: Path | None = None) -> int | None:
    """Whole CPUs a cgroup v2 quota allows (at least 1), or None without a quota."""
    try:
        quota, period = (path or _CGROUP_CPU_MAX).read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, int(quota) // int(period))
    except (ValueError, ZeroDivisionError):
        return None


def _usable_cores() -> int:
    """CPUs this process may use: its affinity mask, capped by a container's CPU quota (a
    container often sees every core of the host but may only use a few)."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return max(1, min(cores, limit) if limit is not None else cores)


def _under_external_launcher() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and LOCAL_WORKERS_ENV not in os.environ


def resolve_processes(config: TrainConfig, device: torch.device) -> int:
    """How many local workers ``config.processes`` means for a run on ``device``.

    ``auto`` is one worker per usable CPU core on a CPU device, at most one per 32 images of the
    batch and a divisor of the batch; 1 on an accelerator (several GPUs: use ``torchrun``) and
    under ``torchrun``.

    Raises:
        ValueError: A number above 1 under ``torchrun``, or for a non-CPU device.
    """
    setting = config.processes
    if setting == "auto":
        if device.type != "cpu" or _under_external_launcher():
            return 1
        cap = min(_usable_cores(), max(1, config.batch_size // _MIN_IMAGES_PER_WORKER))
        return max(n for n in range(1, cap + 1) if config.batch_size % n == 0)
    count = int(setting)
    if count > 1 and _under_external_launcher():
        raise ValueError(
            f"processes={count} starts its own workers; under torchrun the processes are "
            "torchrun's: set processes=1 (or auto)"
        )
    if count > 1 and device.type != "cpu":
        raise ValueError(
            f"processes={count} is for CPU training; on {device.type} devices start one process "
            "per device with torchrun"
        )
    return count


def local_worker_count() -> int:
    """Workers sharing the batch when this process is one of them, else 1."""
    return int(os.environ.get(LOCAL_WORKERS_ENV, "1"))


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def exit_with_parent(parent_pid: int, interval_s: float = 1.0) -> None:
    """End this process (SIGTERM) once ``parent_pid`` is no longer its parent.

    A launcher that is killed (SIGKILL, or SIGTERM, which ends Python without running any
    cleanup) cannot stop its workers, and they would train on for the rest of the run holding
    every core. A daemon thread checks the parent every ``interval_s`` seconds; a parent that is
    already gone when it starts is noticed at once.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="internimage-parent-watch", daemon=True).start()


# Each failing worker leaves "failure-<rank>.json" in the job folder; the launcher reports the
# first of them only: when one worker fails, the others fail after it in their next collective, and
# those follow-on errors say nothing about the cause.
_FAILURE_FILE = "failure-{rank}.json"
# Job folders in the temporary directory: "internimage-workers-<launcher pid>-<random>".
_JOB_DIR_PREFIX = "internimage-workers-"
_JOB_DIR_NAME = re.compile(rf"^{_JOB_DIR_PREFIX}(?P<pid>\d+)-")


class WorkerFailedError(RuntimeError):
    """A training worker failed with an unexpected error; the message holds its traceback."""


def _record_failure(job_dir: Path, rank: int, error: BaseException) -> None:
    from internimage.errors import UserError
    from internimage.files import atomic_write_text

    record = {
        "rank": rank,
        "time": time.time(),
        "type": type(error).__name__,
        "user_error": isinstance(error, UserError),
        "interrupted": isinstance(error, KeyboardInterrupt),
        "exit_code": int(getattr(error, "exit_code", 1)),
        "message": str(error),
        "traceback": traceback.format_exc(),
    }
    atomic_write_text(job_dir / _FAILURE_FILE.format(rank=rank), json.dumps(record))


def _first_recorded_failure(job_dir: Path) -> dict[str, Any] | None:
    records = []
    for path in job_dir.glob(_FAILURE_FILE.format(rank="*")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return min(records, key=lambda record: record["time"]) if records else None


def _raise_worker_failure(job_dir: Path, rank: int, count: int, returncode: int | None) -> None:
    """Raise the error that made the run fail, as the launcher's own."""
    from internimage import errors

    record = _first_recorded_failure(job_dir)
    if record is None:
        # Killed from outside (out of memory, say): no Python error to report.
        how = (f"killed by signal {-returncode}" if returncode is not None and returncode < 0
               else f"exit code {returncode}")
        raise WorkerFailedError(f"training worker {rank} of {count} failed ({how})")
    if record["interrupted"]:
        raise KeyboardInterrupt
    if record["user_error"]:
        error_type = getattr(errors, record["type"], errors.UserError)
        if not (isinstance(error_type, type) and issubclass(error_type, errors.UserError)):
            error_type = errors.UserError
        error = error_type(record["message"])
        error.exit_code = record["exit_code"]
        raise error
    raise WorkerFailedError(
        f"training worker {record['rank']} of {count} failed:\n{record['traceback'].rstrip()}"
    )


def worker_main(job_dir: str | Path) -> None:
    """One worker, started by :func:`run_local_workers` with its environment set: run the job's
    function, and rank 0 leaves its result in ``job_dir``. An error is recorded in ``job_dir``
    for the launcher to report instead of printed, so that a run whose workers all fail says so
    once."""
    exit_with_parent(int(os.environ[_PARENT_PID_ENV]))
    # Ctrl-C in a terminal reaches the whole process group; the launcher stops its workers itself
    # and reports the interruption once. (Also set by the launcher before the start, where it can.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from internimage.console import install_warning_format

    install_warning_format()
    job_dir = Path(job_dir)
    rank = int(os.environ["RANK"])
    # torch takes its thread count from OMP_NUM_THREADS, and the numba kernels follow torch's
    # (internimage.ops.threads).
    try:
        # Written by the parent process of this job a moment ago, in a private temporary folder.
        # Unpickling the function imports its module.
        with open(job_dir / "job.pkl", "rb") as file:
            function, kwargs = pickle.load(file)
        result = function(**kwargs)
    except BaseException as error:
        _record_failure(job_dir, rank, error)
        _exit_now(1)
    if rank == 0:
        with open(job_dir / "result.pkl", "wb") as file:
            pickle.dump(result, file)
    _exit_now(0)


def _exit_now(code: int) -> None:
    """End the worker without the interpreter's teardown.

    Everything the run writes is closed by now. What teardown would still do is destroy gloo's
    objects and their threads, which now and then aborts the process (SIGABRT, "terminate called
    without an active exception") after its work is done, and the launcher would take that for a
    failed run.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _remove_stale_job_dirs() -> None:
    """Delete job folders whose launcher no longer runs (it was killed before it could)."""
    from internimage.files import process_alive

    root = Path(tempfile.gettempdir())
    try:
        entries = list(root.iterdir())
    except OSError:
        return
    for entry in entries:
        match = _JOB_DIR_NAME.match(entry.name)
        if match and entry.is_dir() and not process_alive(int(match["pid"])):
            shutil.rmtree(entry, ignore_errors=True)


def run_local_workers(
    count: int,
    function: Callable[..., Result],
    kwargs: dict[str, Any],
    echo: Callable[[str], None],
) -> Result:
    """Run ``function(**kwargs)`` in ``count`` local worker processes that form one
    ``torch.distributed`` job; returns the result of rank 0, whose progress lines go to ``echo``.

    ``function`` must be picklable by reference (a module-level function) and ``kwargs`` and its
    result picklable.

    The workers are fresh interpreters (not forks: OpenMP runtimes do not survive a fork, and a
    spawned child would re-run the caller's main script). Their standard error is this process's,
    so warnings and progress bars show as usual; their errors are re-raised here, once.

    Raises:
        UserError: The first error of the workers was one (bad data, say), re-raised as is.
        KeyboardInterrupt: Interrupted; the workers have stopped.
        WorkerFailedError: A worker failed unexpectedly (its traceback is in the message) or
            was killed; the others are stopped.
    """
    _remove_stale_job_dirs()
    threads = max(1, _usable_cores() // count)
    env = dict(
        os.environ, WORLD_SIZE=str(count), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
        OMP_NUM_THREADS=str(threads),
        **{LOCAL_WORKERS_ENV: str(count), _PARENT_PID_ENV: str(os.getpid())},
    )
    with tempfile.TemporaryDirectory(prefix=f"{_JOB_DIR_PREFIX}{os.getpid()}-") as tmp:
        job_dir = Path(tmp)
        with open(job_dir / "job.pkl", "wb") as file:
            pickle.dump((function, kwargs), file)
        # Not ``-m internimage.train.launch``: the package imports this module, and running an
        # imported module as __main__ makes runpy warn.
        entry = (
            "import sys; from internimage.train.launch import worker_main; "
            "worker_main(sys.argv[1])"
        )
        command = [sys.executable, "-c", entry, str(job_dir)]
        # Ctrl-C in a terminal signals the whole process group. The workers ignore it from their
        # first instruction on (an ignored signal stays ignored across exec, and Python keeps it
        # so); this process stops them and reports the interruption once.
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main_thread else None
        try:
            workers = [
                subprocess.Popen(
                    command, env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)),
                    stdout=subprocess.PIPE if rank == 0 else subprocess.DEVNULL, text=True,
                )
                for rank in range(count)
            ]
        finally:
            if in_main_thread:
                signal.signal(signal.SIGINT, previous)
        try:
            failed = _follow(workers, echo)
        except BaseException:
            _stop(workers)
            raise
        if failed is not None:
            _stop(workers)
            _raise_worker_failure(job_dir, failed, count, workers[failed].returncode)
        with open(job_dir / "result.pkl", "rb") as file:
            return pickle.load(file)


def _follow(workers: list[subprocess.Popen], echo: Callable[[str], None]) -> int | None:
    """Pass rank 0's lines to ``echo`` until every worker ends; the first failed rank, if any.

    Rank 0's output is read on a thread, so that the workers are checked even while rank 0 is
    silent (waiting in a collective for a worker that has died, say).
    """
    stream = workers[0].stdout
    assert stream is not None
    lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def read() -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    output_open = True
    while True:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            pass
        else:
            if line is not None:
                echo(line)
                continue
            output_open = False
        failed = _first_failure(workers)
        if failed is not None:
            return failed
        if not output_open and all(worker.poll() is not None for worker in workers):
            return None


def _first_failure(workers: list[subprocess.Popen]) -> int | None:
    for rank, worker in enumerate(workers):
        if worker.poll() not in (None, 0):
            return rank
    return None


def _stop(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    for worker in workers:
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
