"""A Hugging Face cache made in a test: released weights without network.

Imported by test modules in any folder (pytest puts ``tests/`` on ``sys.path`` for its
``conftest.py``)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from internimage.models.pretrained import HUB_REPO

__all__ = ["hub_snapshot", "offline_hub"]


def offline_hub(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """Point huggingface_hub at ``cache`` and at an endpoint where nothing listens."""
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                "all_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))


def hub_snapshot(cache: Path, revision: str = "1" * 40, *, repo: str = HUB_REPO) -> Path:
    """The snapshot folder of a weights repository (default: InternImage's) in ``cache``, made
    the ``main`` revision; files put there are what ``released_file`` finds offline."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot
