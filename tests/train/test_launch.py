"""Local worker processes sharing each batch (``TrainConfig.processes``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_settings import PARALLEL_SETTINGS, step_losses

from internimage.errors import DataError, MissingFileError
from internimage.train import Trainer, apply_overrides, load_training_checkpoint
from internimage.train import launch as launch_module
from internimage.train.config import PRESETS, TrainConfig
from internimage.train.launch import resolve_processes

CPU = torch.device("cpu")


def _config(*extra: str) -> TrainConfig:
    return apply_overrides(PRESETS["fashion-mnist"], list(extra))


@pytest.mark.parametrize(
    ("cores", "batch", "expected"),
    [
        (2, 128, 2),   # the main job on two cores
        (8, 128, 4),   # at least 32 images per worker
        (6, 128, 4),   # a divisor of the batch
        (16, 96, 3),
        (2, 16, 1),    # too small a batch to share
        (1, 128, 1),
    ],
)
def test_auto_takes_one_worker_per_core_within_the_batch(
    monkeypatch: pytest.MonkeyPatch, cores: int, batch: int, expected: int
) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(launch_module, "_usable_cores", lambda: cores)
    config = _config("processes=auto", f"batch_size={batch}")
    assert resolve_processes(config, CPU) == expected


@pytest.mark.parametrize(
    ("content", "expected"),
    [("200000 100000\n", 2), ("150000 100000\n", 1), ("50000 100000\n", 1),
     ("max 100000\n", None), ("garbage\n", None)],
)
def test_a_container_cpu_quota_caps_the_worker_count(
    tmp_path: Path, content: str, expected: int | None
) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text(content)
    assert launch_module._cgroup_cpu_limit(cpu_max) == expected
    assert launch_module._cgroup_cpu_limit(tmp_path / "absent") is None


def test_usable_cores_take_the_smaller_of_affinity_and_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu_max = tmp_path / "cpu.max"
    monkeypatch.setattr(launch_module, "_CGROUP_CPU_MAX", cpu_max)
    monkeypatch.setattr(launch_module.os, "sched_getaffinity", lambda pid: set(range(16)),
                        raising=False)
    cpu_max.write_text("400000 100000\n")
    assert launch_module._usable_cores() == 4
    cpu_max.write_text("max 100000\n")
    assert launch_module._usable_cores() == 16


def test_auto_is_one_process_on_gpus_and_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch_module, "_usable_cores", lambda: 8)
    config = _config("processes=auto", "batch_size=128")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_processes(config, torch.device("cuda", 0)) == 1
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert resolve_processes(config, CPU) == 1


def test_explicit_worker_counts_that_cannot_work_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = _config("processes=2", "batch_size=128")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="torchrun"):
        resolve_processes(config, CPU)
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(ValueError, match="CPU training"):
        resolve_processes(config, torch.device("cuda", 0))
    assert resolve_processes(config, CPU) == 2


@pytest.mark.parametrize(
    ("value", "message"),
    [("0", "processes must be"), ("many", "processes must be"), ("3", "must divide batch_size")],
)
def test_bad_process_settings_name_the_problem(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _config(f"processes={value}", "batch_size=16")


def test_two_workers_train_the_same_run_as_one_process(tmp_path: Path) -> None:
    """Two workers sharing batches of 16 follow the single-process run step for step, report
    through the caller's echo, and a resumed run starts its workers again. The tolerance is the
    torchrun comparison's in test_distributed.py: the runs differ in summation order only."""
    single = Trainer(_config(*PARALLEL_SETTINGS, f"output_dir={tmp_path}", "name=single")).fit()
    lines: list[str] = []
    trainer = Trainer(
        _config(*PARALLEL_SETTINGS, "processes=2", f"output_dir={tmp_path}", "name=workers"),
        echo=lines.append,
    )
    result = trainer.fit()
    assert result.run_dir == tmp_path / "workers"
    assert trainer.ctx.is_main and trainer.ctx.world_size == 2
    assert any("total batch 16" in line and "2 process(es)" in line for line in lines), lines
    assert any(line.startswith("epoch 2/2:") for line in lines), lines
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert saved["processes"] == 2 and saved["batch_size"] == 16

    expected, got = step_losses(single.run_dir), step_losses(result.run_dir)
    assert len(expected) == len(got) == 8
    assert expected[0] - min(expected) > 0.05  # the run does learn
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-4, atol=1e-5)
    weights = load_training_checkpoint(result.last_checkpoint)["model"]
    for name, value in load_training_checkpoint(single.last_checkpoint)["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=1e-5, msg=name)

    resumed = Trainer(
        resume=result.run_dir, config_overrides={"schedule": {"epochs": 3}}
    ).fit()
    state = load_training_checkpoint(resumed.last_checkpoint)
    assert state["global_step"] == 12
    assert len(state["rng"]) == 2  # both workers' random streams were saved again


def test_a_failing_worker_stops_the_run_with_its_error(tmp_path: Path) -> None:
    """Both workers fail on the missing data; the launcher raises that error once, as itself."""
    config = _config(
        *PARALLEL_SETTINGS, "processes=2", "data.dataset=fashion-mnist",
        f"data.root={tmp_path / 'missing'}", f"output_dir={tmp_path}",
    )
    with pytest.raises(MissingFileError, match="Fashion-MNIST IDX files .* not found in"):
        Trainer(config).fit()


def _failure(job_dir: Path, rank: int, error: BaseException, at: float) -> None:
    try:
        raise error
    except BaseException as raised:
        launch_module._record_failure(job_dir, rank, raised)
    path = job_dir / f"failure-{rank}.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "time": at}))


def test_the_first_failure_of_the_workers_is_the_one_reported(tmp_path: Path) -> None:
    # Rank 1 failed first; rank 0's error came after, in the collective that rank 1 left.
    _failure(tmp_path, 0, RuntimeError("Connection closed by peer"), at=20.0)
    _failure(tmp_path, 1, DataError("no image to evaluate"), at=10.0)
    with pytest.raises(DataError, match="no image to evaluate") as info:
        launch_module._raise_worker_failure(tmp_path, 0, 2, 1)
    assert info.value.exit_code == 1


def test_an_unexpected_worker_failure_carries_its_traceback(tmp_path: Path) -> None:
    _failure(tmp_path, 1, ZeroDivisionError("division by zero"), at=1.0)
    with pytest.raises(launch_module.WorkerFailedError,
                       match=r"(?s)training worker 1 of 2 failed:.*Traceback.*ZeroDivisionError"):
        launch_module._raise_worker_failure(tmp_path, 1, 2, 1)


def test_a_killed_worker_is_named_with_its_signal(tmp_path: Path) -> None:
    with pytest.raises(launch_module.WorkerFailedError,
                       match=r"training worker 1 of 2 failed \(killed by signal 9\)"):
        launch_module._raise_worker_failure(tmp_path, 1, 2, -9)


def test_a_dead_worker_is_noticed_while_rank_0_waits_silently() -> None:
    """Rank 0 blocked in a collective prints nothing; the death of another worker must still end
    the run promptly rather than after gloo's half-hour timeout."""
    waiting = "import time; time.sleep(120)"
    workers = [
        subprocess.Popen([sys.executable, "-c", waiting], stdout=subprocess.PIPE, text=True),
        subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"]),
    ]
    started = time.monotonic()
    try:
        assert launch_module._follow(workers, print) == 1
    finally:
        launch_module._stop(workers)
    assert time.monotonic() - started < 30
    assert workers[0].returncode is not None and workers[1].returncode == 3


def _has_exited(pid: int) -> bool:
    """Whether ``pid`` has ended (gone, or a zombie that nobody has reaped yet)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return any(line.split()[1:2] == ["Z"] for line in status.splitlines()
               if line.startswith("State:"))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_a_worker_ends_when_its_launcher_is_killed() -> None:
    """SIGKILL of the launching process leaves no orphaned worker training on."""
    child = (
        "import os, time; from internimage.train.launch import exit_with_parent; "
        "exit_with_parent(os.getppid(), interval_s=0.05); print(os.getpid(), flush=True); "
        "time.sleep(120)"
    )
    launcher = (
        "import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(120)"
    )
    parent = subprocess.Popen([sys.executable, "-c", launcher], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        worker_pid = int(parent.stdout.readline())
        assert not _has_exited(worker_pid)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 20
    while not _has_exited(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    exited = _has_exited(worker_pid)
    if not exited:
        os.kill(worker_pid, signal.SIGKILL)  # leave nothing behind when the check fails
    assert exited
