"""The command line's contract, through the installed ``internimage`` command in a subprocess.

User errors are one line on standard error (``internimage: error: ...``), exit 2 for usage and
1 otherwise; internal errors keep their traceback; ``--debug`` shows tracebacks; Ctrl-C exits 130
quietly after the workers stop; run folders are never overwritten silently; an evaluation without
a single readable image is an error; corrupt checkpoints and missing offline weights are named.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from command_line import COMMAND
from hub_cache import hub_snapshot
from internimage.data import load_bundled_subset

# A one-block-per-stage atto on 32-pixel images: 4 steps of 16 images per epoch, seconds per run.
TINY = [
    "--set", "device=cpu",
    "--set", "model.depths=1,1,1,1",
    "--set", "data.train_limit=64",
    "--set", "data.val_limit=32",
    "--set", "data.num_workers=0",
    "--set", "schedule.warmup_epochs=0.5",
    "--set", "progress=false",
    "--epochs", "1",
    "--batch-size", "16",
    "--image-size", "32",
    "--processes", "1",
]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``internimage ARGS`` as a user would run it, with no terminal attached."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=timeout, env=full_env,
        stdin=subprocess.DEVNULL,
    )


def assert_user_error(
    result: subprocess.CompletedProcess[str], exit_code: int, *fragments: str
) -> str:
    """The run failed with exactly one error line naming ``fragments``; returns that line."""
    assert result.returncode == exit_code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    messages = [line for line in result.stderr.splitlines()
                if line.startswith("internimage:") and not line.startswith("internimage: warning")]
    assert len(messages) == 1, result.stderr
    line = messages[0]
    assert line.startswith("internimage: error: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def _save_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _bad_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image")
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run on the bundled data."""
    out = tmp_path_factory.mktemp("runs")
    result = run_cli("train", *TINY, "--output-dir", str(out), "--name", "tiny")
    assert result.returncode == 0, result.stdout + result.stderr
    return out / "tiny"


@pytest.fixture(scope="module")
def atto_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Plain weights of a 3-class one-block atto (no training checkpoint)."""
    import internimage

    model = internimage.create_model("internimage_atto", num_classes=3)
    path = tmp_path_factory.mktemp("weights") / "atto3.pth"
    torch.save(model.state_dict(), path)
    return path


# ----------------------------------------------------------------------------------- usage


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["train", "--set", "optim.learning_rate=1"], ["optim.learning_rate", "valid keys"]),
        (["train", "--set", "optim.lr=fast"], ["optim.lr", "expected a number", "'fast'"]),
        (["train", "--set", "model.name=internimage_zz"], ["internimage_zz", "available"]),
        (["train", "--set", "model.groups=3,3,3,3"], ["divisible"]),
        (["train", "--set", "lr"], ["'lr'", "section.key=value"]),
        (["train", "--no-such-flag"], ["--no-such-flag"]),
        (["train", "--resume", "runs/x", "--config", "c.json"], ["--resume", "--config"]),
        (["train", "--resume", "runs/x", "--overwrite"], ["--overwrite"]),
        (["eval", "--checkpoint", "x.pt", "--batch-size", "0"], ["--batch-size", "at least 1"]),
        (["predict", "x.png", "--checkpoint", "x.pt", "--model", "internimage_zz"],
         ["internimage_zz", "available"]),
        (["train", "--config", "missing.json"], ["missing.json", "does not exist"]),
        (["info", "internimage_q"], ["internimage_q", "internimage_t"]),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], fragments: list[str]) -> None:
    assert_user_error(run_cli(*args), 2, *fragments)


def test_a_config_file_that_is_not_json_names_the_place(tmp_path: Path) -> None:
    config = tmp_path / "run.json"
    config.write_text('{"optim": {"lr": 1e-3,}}')
    assert_user_error(run_cli("train", "--config", str(config)), 2, str(config), "line 1")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["train", "--device", "tpu0"], ["unknown device 'tpu0'"]),
        (["train", "--data", "folder", "--data-root", "/nonexistent/data", "--device", "cpu"],
         ["/nonexistent/data", "does not exist"]),
        (["train", "--data", "fashion-mnist", "--data-root", "/nonexistent/idx",
          "--device", "cpu"], ["/nonexistent/idx", "Fashion-MNIST"]),
        (["eval", "--checkpoint", "/nonexistent/last.pt"], ["/nonexistent/last.pt", "not found"]),
        (["train", "--resume", "/nonexistent/run"], ["/nonexistent/run"]),
    ],
)
def test_data_file_and_device_errors_are_one_line_and_exit_1(
    args: list[str], fragments: list[str]
) -> None:
    assert_user_error(run_cli(*args), 1, *fragments)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_gpu_is_one_line() -> None:
    assert_user_error(run_cli("train", "--device", "cuda"), 1, "CUDA is not available")


def test_debug_shows_the_traceback_of_a_user_error() -> None:
    for args in (["--debug", "eval", "--checkpoint", "/nonexistent.pt"],
                 ["eval", "--checkpoint", "/nonexistent.pt", "--debug"]):
        result = run_cli(*args)
        assert result.returncode == 1
        assert "Traceback" in result.stderr and "MissingFileError" in result.stderr
        assert result.stderr.rstrip().splitlines()[-1].startswith("internimage: error: ")


def test_an_internal_error_keeps_its_traceback() -> None:
    # A bug stands in for one: the table code divides by zero. The real main() handles it.
    program = (
        "import sys; import internimage.cli.info as info; "
        "info.variant_summary = lambda *a, **k: 1 / 0; "
        "from internimage.cli.main import main; sys.exit(main(['info']))"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ZeroDivisionError" in result.stderr
    assert "internal error" in result.stderr.splitlines()[-1]


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Broken checkpoint files and what their message must say."""
    folder.mkdir(parents=True, exist_ok=True)
    good = io.BytesIO()
    torch.save({"weight": torch.ones(64, 64)}, good)
    files = {
        "empty": (b"", "empty"),
        "truncated": (good.getvalue()[: len(good.getvalue()) // 2], "truncated"),
        "random": (np.random.default_rng(0).bytes(4096), "not a checkpoint"),
    }
    objects = io.BytesIO()
    torch.save({"path": Path("/"), "weight": torch.ones(2)}, objects)
    files["objects"] = (objects.getvalue(), "can run code")
    tensor = io.BytesIO()
    torch.save(torch.ones(3), tensor)
    files["tensor"] = (tensor.getvalue(), "not a mapping")
    out = {}
    for name, (payload, expected) in files.items():
        path = folder / f"{name}.pt"
        path.write_bytes(payload)
        out[name] = (path, expected)
    # The content decides the format: garbage named .safetensors is no checkpoint at all, and
    # a safetensors file cut short (its header intact) is a damaged safetensors file.
    garbage = folder / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    out["garbage named safetensors"] = (garbage, "not a checkpoint")
    whole = folder / "whole.safetensors"
    save_file({"weight": torch.ones(64, 64)}, str(whole))
    cut = folder / "cut.pth"
    cut.write_bytes(whole.read_bytes()[:-100])
    out["safetensors cut short"] = (cut, "not a valid safetensors file")
    return out


def test_corrupt_checkpoints_are_named_and_never_unpickled(tmp_path: Path) -> None:
    cases = _checkpoint_files(tmp_path / "ckpt")
    # Both commands read through the same reader; resuming is tried on one file of each format.
    resumed = {"truncated", "objects", "safetensors cut short"}
    for name, (path, expected) in cases.items():
        commands = [["eval", "--checkpoint", str(path), "--model", "internimage_atto"]]
        if name in resumed:
            commands.append(["train", "--resume", str(path)])
        for args in commands:
            result = run_cli(*args)
            line = assert_user_error(result, 1, str(path))
            assert expected in line, (name, args[0], line)
            # torch's advice to retry with weights_only=False must never reach the user.
            assert "weights_only" not in result.stderr, (name, result.stderr)


def test_a_plain_weights_file_cannot_be_resumed(atto_weights: Path) -> None:
    line = assert_user_error(run_cli("train", "--resume", str(atto_weights)), 1)
    assert "not an internimage training checkpoint" in line


def test_a_checkpoint_of_another_class_count_is_refused_on_fashion_mnist(
    atto_weights: Path,
) -> None:
    result = run_cli("eval", "--checkpoint", str(atto_weights), "--model", "internimage_atto",
                     "--data", "fashion-mnist-subset", "--workers", "0")
    assert_user_error(result, 1, "3 classes", "Fashion-MNIST 10")


# ------------------------------------------------------------------------------- run folders


def test_an_existing_run_is_never_overwritten_silently(tiny_run: Path, tmp_path: Path) -> None:
    before = {name: (tiny_run / name).read_bytes() for name in ("best.pt", "metrics.csv")}
    for processes in ("1", "2"):
        result = run_cli("train", *TINY, "--processes", processes, "--output-dir",
                         str(tiny_run.parent), "--name", tiny_run.name)
        assert_user_error(result, 1, str(tiny_run), "--resume", "--overwrite")
    assert {name: (tiny_run / name).read_bytes() for name in before} == before

    # --overwrite replaces the run: a new one with another seed, and no file of the old one.
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("best.pt", "last.pt", "metrics.csv", "config.json"):
        (copy / name).write_bytes((tiny_run / name).read_bytes())
    (copy / "notes.txt").write_text("mine")
    result = run_cli("train", *TINY, "--seed", "1", "--output-dir", str(tmp_path),
                     "--name", "copy", "--overwrite")
    assert result.returncode == 0, result.stderr
    assert (copy / "best.pt").read_bytes() != before["best.pt"]
    assert json.loads((copy / "config.json").read_text())["seed"] == 1
    with (copy / "metrics.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1"]
    assert (copy / "notes.txt").read_text() == "mine"  # not a file of the run


def test_stale_temporary_files_of_killed_runs_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = tmp_path / "runs" / "stale"
    run_dir.mkdir(parents=True)
    stale = run_dir / f".last.pt.{dead.pid}.k3j2h1gf.tmp"
    stale.write_bytes(b"half a checkpoint")
    live = run_dir / f".last.pt.{os.getpid()}.a1b2c3d4.tmp"  # a writer that still runs
    live.write_bytes(b"being written")
    temp_root = tmp_path / "tmp"
    stale_job = temp_root / f"internimage-workers-{dead.pid}-x1y2z3"
    stale_job.mkdir(parents=True)
    (stale_job / "job.pkl").write_bytes(b"old job")
    result = run_cli("train", *TINY, "--processes", "2", "--output-dir", str(tmp_path / "runs"),
                     "--name", "stale", env={"TMPDIR": str(temp_root)})
    assert result.returncode == 0, result.stderr
    assert not stale.exists() and not stale_job.exists()
    assert live.exists()
    assert not list(temp_root.glob("internimage-workers-*"))  # its own job folder is gone too


def test_under_torchrun_an_error_of_every_rank_is_printed_once(
    tiny_run: Path, tmp_path: Path
) -> None:
    """Two ranks as torchrun starts them: a bad setting (before the process group) and a run
    folder that holds a run (decided by rank 0 for both) each give one line in all."""
    from internimage.train.launch import free_port

    for args, exit_code in ((["--set", "optim.lr=fast"], 2),
                            (["--output-dir", str(tiny_run.parent), "--name", tiny_run.name], 1)):
        port = str(free_port())
        ranks = [
            subprocess.Popen(
                [*COMMAND, "train", *TINY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, env=dict(os.environ, WORLD_SIZE="2", RANK=str(rank),
                                    LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                                    MASTER_PORT=port),
            )
            for rank in range(2)
        ]
        outputs = [rank.communicate(timeout=120) for rank in ranks]
        assert [rank.returncode for rank in ranks] == [exit_code, exit_code], outputs
        lines = [line for _, err in outputs for line in err.splitlines()
                 if line.startswith("internimage: error")]
        assert len(lines) == 1 and lines[0].startswith("internimage: error: "), outputs
        assert "Traceback" not in outputs[1][1]


# --------------------------------------------------------------------------------- no images


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``good/{train,val}`` with real PNGs of two classes, ``bad/...`` with only broken files."""
    root = tmp_path_factory.mktemp("images")
    images, labels = load_bundled_subset("train")
    for split, count in (("train", 16), ("val", 4)):
        for label in (0, 1):
            picked = np.flatnonzero(labels == label)[:count]
            for i, index in enumerate(picked):
                _save_png(root / "good" / split / f"class{label}" / f"{i}.png", images[index])
                _bad_image(root / "bad" / split / f"class{label}" / f"{i}.png")
    return root


def _tree(root: Path, train: str, val: str) -> Path:
    """A dataset root whose splits link to the good or the bad files."""
    target = root / f"{train}-{val}"
    if not target.exists():
        target.mkdir()
        (target / "train").symlink_to(root / train / "train")
        (target / "val").symlink_to(root / val / "val")
    return target


def test_eval_without_a_readable_image_is_an_error(tiny_run: Path, image_tree: Path) -> None:
    bad = image_tree / "bad" / "val"
    for workers in ("0", "2"):
        result = run_cli("eval", "--checkpoint", str(tiny_run / "last.pt"), "--data", "folder",
                         "--data-root", str(bad), "--workers", workers, "--json")
        # The checkpoint has ten classes; the folder two. Both problems are user errors.
        assert_user_error(result, 1, "class folders")
    weights = image_tree / "two_classes.pth"
    import internimage

    torch.save(internimage.create_model("internimage_atto", num_classes=2).state_dict(), weights)
    for workers in ("0", "2"):
        result = run_cli("eval", "--checkpoint", str(weights), "--model", "internimage_atto",
                         "--image-size", "32", "--data", "folder", "--data-root", str(bad),
                         "--workers", workers, "--json")
        assert_user_error(result, 1, "none of the 8 images could be read")
        assert result.stdout == ""  # no 0% result anywhere
        # Each file is named once, in a line of its own, also from the loader's processes.
        warned = [line for line in result.stderr.splitlines()
                  if line.startswith("internimage: warning: skipping unreadable image ")]
        assert len(warned) == 8 and len(result.stderr.splitlines()) == 9, result.stderr


def test_training_with_an_unreadable_validation_set_saves_no_best(
    image_tree: Path, tmp_path: Path
) -> None:
    root = _tree(image_tree, "good", "bad")
    result = run_cli("train", *TINY, "--data", "folder", "--data-root", str(root),
                     "--model", "internimage_atto", "--output-dir", str(tmp_path),
                     "--name", "run")
    assert_user_error(result, 1, "none of the 8 images could be read")
    assert not (tmp_path / "run" / "best.pt").exists()


def test_a_training_batch_without_a_readable_image_names_the_cause(
    image_tree: Path, tmp_path: Path
) -> None:
    root = _tree(image_tree, "bad", "good")
    result = run_cli("train", *TINY, "--data", "folder", "--data-root", str(root),
                     "--output-dir", str(tmp_path), "--name", "run")
    line = assert_user_error(result, 1, "no image of a training batch could be read")
    assert "nan" not in line


def test_worker_processes_report_one_error_not_one_per_rank(
    image_tree: Path, tmp_path: Path
) -> None:
    root = _tree(image_tree, "good", "bad")
    result = run_cli("train", *TINY, "--processes", "2", "--data", "folder", "--data-root",
                     str(root), "--output-dir", str(tmp_path), "--name", "run")
    assert_user_error(result, 1, "none of the 8 images could be read")


# ---------------------------------------------------------------------------------- predict


def test_predict_json_stays_json_when_an_image_is_unreadable(
    tiny_run: Path, tmp_path: Path
) -> None:
    images, _ = load_bundled_subset("test")
    good = _save_png(tmp_path / "good.png", images[0])
    bad = _bad_image(tmp_path / "bad.png")
    missing = tmp_path / "missing.png"
    result = run_cli("predict", str(good), str(bad), str(missing), "--checkpoint",
                     str(tiny_run / "best.pt"), "--json")
    assert result.returncode == 1
    entries = json.loads(result.stdout)  # nothing but the JSON on standard output
    assert [entry["image"] for entry in entries] == [str(good), str(bad), str(missing)]
    assert "top" in entries[0] and "cannot read image" in entries[1]["error"]
    assert "no such file" in entries[2]["error"]
    errors = [line for line in result.stderr.splitlines() if line.startswith("internimage: error")]
    assert len(errors) == 2 and "Traceback" not in result.stderr


def test_images_of_every_mode_and_depth_give_the_8_bit_prediction(
    tiny_run: Path, tmp_path: Path
) -> None:
    """The same picture stored as 16-bit greyscale, float TIFF, palette with transparency and
    RGBA classifies exactly as its 8-bit greyscale file: the samples are scaled, not clipped."""
    images, _ = load_bundled_subset("test")
    picture = images[3]  # [28, 28] uint8
    files = {"8-bit": _save_png(tmp_path / "grey8.png", picture)}
    files["16-bit"] = _save_png(tmp_path / "grey16.png", picture.astype(np.uint16) * 257)
    float_path = tmp_path / "float.tiff"
    Image.fromarray(picture.astype(np.float32) / 255.0).save(float_path)
    files["float"] = float_path
    # A grey palette whose entry 0 (black) is transparent, indexed by the grey levels.
    palette = Image.frombytes("P", picture.shape[::-1], picture.tobytes())
    palette.putpalette([level for i in range(256) for level in (i, i, i)])
    palette.save(tmp_path / "palette.png", transparency=0)
    files["palette"] = tmp_path / "palette.png"
    rgba = np.dstack([picture, picture, picture, np.full_like(picture, 128)])
    files["rgba"] = _save_png(tmp_path / "rgba.png", rgba)
    result = run_cli("predict", *map(str, files.values()), "--checkpoint",
                     str(tiny_run / "best.pt"), "--json", "--topk", "10")
    assert result.returncode == 0, result.stderr
    assert "warn" not in result.stderr.lower()  # no Pillow warning about the palette either
    tops = [entry["top"] for entry in json.loads(result.stdout)]
    for name, top in zip(files, tops, strict=True):
        assert top == tops[0], name
    # Clipping would make the 16-bit file white wherever the picture is not black.
    assert Image.open(files["16-bit"]).mode in ("I;16", "I")


# --------------------------------------------------------------------------- offline weights


def test_pretrained_weights_without_network_fail_fast_with_where_to_put_them(
    tmp_path: Path,
) -> None:
    images, _ = load_bundled_subset("test")
    image = _save_png(tmp_path / "x.png", images[0])
    cache = tmp_path / "hub"
    unreachable = {"HF_HUB_CACHE": str(cache), "HF_ENDPOINT": "http://127.0.0.1:9",
                   "HTTPS_PROXY": "", "HTTP_PROXY": "", "ALL_PROXY": ""}
    for args, env in (
        (["predict", str(image), "--pretrained", "internimage_t"], unreachable),
        (["eval", "--pretrained", "internimage_t", "--data", "folder", "--data-root",
          str(tmp_path)], unreachable),
        (["predict", str(image), "--pretrained", "internimage_t"],
         {**unreachable, "HF_HUB_OFFLINE": "1"}),
    ):
        started = time.monotonic()
        result = run_cli(*args, env=env)
        elapsed = time.monotonic() - started
        line = assert_user_error(result, 1, "internimage_t_1k_224.pth", str(cache),
                                 "--checkpoint PATH")
        assert "HF_HUB_OFFLINE" in line or "unreachable" in line
        # huggingface_hub alone retries for about 25 s; start-up is a few seconds.
        assert elapsed < 20, elapsed


def test_pretrained_weights_in_the_hub_cache_load_without_network(tmp_path: Path) -> None:
    import internimage

    cache = tmp_path / "hub"
    snapshot = hub_snapshot(cache)
    model = internimage.create_model("internimage_t")
    # bf16 halves the file; loading converts to the model's float32.
    torch.save({"model": {k: v.bfloat16() for k, v in model.state_dict().items()}},
               snapshot / "internimage_t_1k_224.pth")
    images, _ = load_bundled_subset("test")
    image = _save_png(tmp_path / "x.png", np.dstack([images[0]] * 3))
    result = run_cli("predict", str(image), "--pretrained", "internimage_t", "--json",
                     "--topk", "1", env={"HF_HUB_CACHE": str(cache),
                                         "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["top"][0]["index"] in range(1000)


# ----------------------------------------------------------------------------------- Ctrl-C


def _workers_of(launcher_pid: int) -> list[int]:
    """Processes started by the training launcher ``launcher_pid`` (from their environment)."""
    marker = f"INTERNIMAGE_LAUNCHER_PID={launcher_pid}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_ctrl_c_stops_the_workers_and_exits_130_quietly(tmp_path: Path) -> None:
    command = [*COMMAND, "train", *TINY, "--processes", "2", "--epochs", "50",
               "--set", "checkpoint_every=1", "--output-dir", str(tmp_path), "--name", "run"]
    # Its own process group, as a terminal gives a foreground job: Ctrl-C signals all of it.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "run" / "last.pt").exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
        workers = _workers_of(process.pid)
        assert len(workers) == 2
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == (
        f"internimage: interrupted; continue with: internimage train --resume {tmp_path / 'run'}"
    )
    deadline = time.monotonic() + 20
    while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(pid) for pid in workers)


@pytest.mark.parametrize(
    ("blocked", "args", "extra"),
    [
        ("torchvision", ["eval", "--pretrained", "mask_rcnn_internimage_t_1x_coco", "--data",
                         "coco", "--data-root", "."], "det"),
        ("torchvision", ["train", "--preset", "fashion-mnist-scenes-detection"], "det"),
        ("pycocotools", ["predict", "x.png", "--pretrained", "mask_rcnn_internimage_t_1x_coco"],
         "det"),
        ("transformers", ["eval", "--pretrained", "upernet_internimage_t_ade20k", "--data",
                          "ade20k", "--data-root", "."], "seg"),
    ],
)
def test_a_missing_extra_is_named_in_one_line(blocked: str, args: list[str], extra: str) -> None:
    # The package is made unimportable in the child, as if it were not installed.
    code = (f"import sys; sys.modules[{blocked!r}] = None; from internimage.cli.main import "
            "main; sys.argv = ['internimage', *sys.argv[1:]]; sys.exit(main())")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                            timeout=120, stdin=subprocess.DEVNULL)
    assert_user_error(result, 1, f"pip install internimage[{extra}]", blocked)
