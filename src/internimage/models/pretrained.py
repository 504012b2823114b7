"""Registry of the released ImageNet checkpoints and their download through a local cache."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from internimage.errors import (
    MissingDependencyError,
    MissingFileError,
    UsageError,
    WeightsUnavailableError,
)

__all__ = [
    "HUB_REPO",
    "dense_backbone_arguments",
    "PRETRAINED",
    "PretrainedWeights",
    "download_checkpoint",
    "released_file",
    "resolve_pretrained",
]

#: Hugging Face repository of the released classification checkpoints.
HUB_REPO = "OpenGVLab/InternImage"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# https://<host>/<owner>/<repo>/resolve/<revision>/<file>
_HUB_URL = re.compile(r"^(https?://[^/]+)/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


@dataclass(frozen=True)
class PretrainedWeights:
    """A released checkpoint and its evaluation preprocessing.

    Attributes:
        variant: Model name it belongs to.
        file_name: File in :data:`HUB_REPO`.
        input_size: ``(3, S, S)`` evaluation input.
        crop_fraction: Centre-crop fraction (resize the shorter side to S / fraction, crop S).
        interpolation: Resize interpolation.
        mean: Normalisation mean (RGB, 0-1 scale).
        std: Normalisation std.
        num_classes: Classifier outputs.
        license: Licence of the weights.
    """

    variant: str
    file_name: str
    input_size: tuple[int, int, int]
    crop_fraction: float = 1.0
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = _IMAGENET_MEAN
    std: tuple[float, float, float] = _IMAGENET_STD
    num_classes: int = 1000
    license: str = "MIT"

    @property
    def url(self) -> str:
        """Download address on the Hugging Face hub."""
        return f"https://huggingface.co/{HUB_REPO}/resolve/main/{self.file_name}"


PRETRAINED: dict[str, PretrainedWeights] = {
    w.variant: w
    for w in (
        PretrainedWeights("internimage_t", "internimage_t_1k_224.pth", (3, 224, 224)),
        PretrainedWeights("internimage_s", "internimage_s_1k_224.pth", (3, 224, 224)),
        PretrainedWeights("internimage_b", "internimage_b_1k_224.pth", (3, 224, 224)),
        PretrainedWeights("internimage_l", "internimage_l_22kto1k_384.pth", (3, 384, 384)),
        PretrainedWeights("internimage_xl", "internimage_xl_22kto1k_384.pth", (3, 384, 384)),
        PretrainedWeights("internimage_h", "internimage_h_22kto1k_640.pth", (3, 640, 640)),
        PretrainedWeights("internimage_g", "internimage_g_22kto1k_512.pth", (3, 512, 512)),
    )
}


# Seconds to wait for the hub's host to answer before calling it unreachable. huggingface_hub
# itself retries with back-off for about 25 s before it gives up without a network.
_PROBE_TIMEOUT_S = 3.0
_DEFAULT_ENDPOINT = "https://huggingface.co"
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                    "all_proxy")


def _unreachable(endpoint: str) -> str | None:
    """Why ``endpoint``'s host cannot be reached right now, or None when it answers.

    Name resolution and the TCP connection run on a daemon thread so that a resolver that hangs
    cannot hold the caller beyond the timeout. Behind a proxy the host is not contacted directly,
    so the answer is left to the download itself.
    """
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return None
    parts = urllib.parse.urlsplit(endpoint)
    if not parts.hostname:
        return f"endpoint {endpoint!r} has no host name"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            with socket.create_connection((parts.hostname, port), timeout=_PROBE_TIMEOUT_S):
                outcome.append(None)
        except OSError as error:
            outcome.append(error.strerror or str(error) or type(error).__name__)

    thread = threading.Thread(target=probe, name="internimage-hub-probe", daemon=True)
    thread.start()
    thread.join(_PROBE_TIMEOUT_S + 0.5)
    if not outcome:
        return f"no answer within {_PROBE_TIMEOUT_S:.0f} s"
    return outcome[0]


def _hub_download(
    repo_id: str, filename: str, revision: str, endpoint: str | None, cache_dir: str | None
) -> Path:
    """``filename`` of ``repo_id`` from the hub cache, downloading it there when missing.

    Raises:
        MissingDependencyError: huggingface_hub is not installed.
        WeightsUnavailableError: The file is not cached and cannot be downloaded; the message
            says where to put it.
    """
    try:
        import huggingface_hub
    except ImportError as error:
        raise MissingDependencyError(
            "downloading pretrained InternImage weights needs huggingface_hub; install it with "
            "`pip install internimage[hub]` (or pass a local checkpoint path)"
        ) from error
    # Released files never change, so a cached copy is used without asking the hub: loading works
    # offline, at once.
    cached = huggingface_hub.try_to_load_from_cache(
        repo_id, filename, cache_dir=cache_dir, revision=revision
    )
    if isinstance(cached, str):
        return Path(cached)
    from huggingface_hub import constants

    host = endpoint or _DEFAULT_ENDPOINT
    cache = cache_dir or constants.HF_HUB_CACHE
    advice = (
        f"without network, put the file into the Hugging Face cache {cache} (on a machine with "
        f"network: `hf download {repo_id} {filename}`, then copy its cache folder; HF_HUB_CACHE "
        f"chooses the folder), or use the file directly: create_model(..., pretrained='PATH'), "
        f"`internimage eval|predict --checkpoint PATH --model NAME`, "
        f"`internimage train --finetune PATH`"
    )
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in (
        "1", "true", "yes", "on"
    ):
        raise WeightsUnavailableError(
            f"{filename} of {repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
            + advice
        )
    reason = _unreachable(host)
    if reason is not None:
        raise WeightsUnavailableError(
            f"cannot download {filename} of {repo_id}: {host} is unreachable ({reason}); "
            + advice
        )
    try:
        return Path(
            huggingface_hub.hf_hub_download(
                repo_id, filename, revision=revision, endpoint=endpoint, cache_dir=cache_dir
            )
        )
    except Exception as error:  # network, HTTP and cache errors alike: the file is not here
        raise WeightsUnavailableError(
            f"cannot download {filename} of {repo_id} from {host} "
            f"({type(error).__name__}: {error}); " + advice
        ) from error


def _default_cache_dir() -> str | None:
    # huggingface_hub reads these variables once at import; read them at call time so that a
    # change made after importing it still applies.
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def download_checkpoint(url: str, *, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Local copy of a checkpoint URL, downloaded once into a cache.

    ``.../<owner>/<repo>/resolve/<revision>/<file>`` addresses (Hugging Face hub layout) go through
    ``huggingface_hub``'s cache, with the URL's host as endpoint. Other URLs are stored under
    ``cache_dir`` (default ``$INTERNIMAGE_CACHE`` or ``~/.cache/internimage``) in a folder named
    by a hash of the URL; the download is written to a temporary file and renamed.

    Args:
        url: ``http(s)://`` address.
        cache_dir: Cache folder (default: see above; for hub URLs the hub cache).
    """
    match = _HUB_URL.match(url)
    if match:
        host, repo_id, revision, filename = match.groups()
        return _hub_download(
            repo_id, urllib.parse.unquote(filename), revision, host,
            str(cache_dir) if cache_dir is not None else _default_cache_dir(),
        )
    import torch.hub

    root = Path(
        cache_dir or os.environ.get("INTERNIMAGE_CACHE") or Path.home() / ".cache" / "internimage"
    )
    name = Path(urllib.parse.urlparse(url).path).name or "checkpoint.pth"
    target = root / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        # download_url_to_file writes a temporary file in the same folder and moves it in place.
        try:
            torch.hub.download_url_to_file(url, str(target), progress=False)
        except OSError as error:  # URLError and HTTPError are OSErrors
            raise WeightsUnavailableError(
                f"cannot download {url} ({error}); without network, download the file elsewhere "
                f"and pass its path instead of the URL"
            ) from error
    return target


def dense_backbone_arguments(
    variant: str, overrides: Sequence[tuple[str, Any]] = ()
) -> dict[str, Any]:
    """Upstream ``InternImage(...)`` arguments of the backbone of a released dense model: the
    variant's architecture with the dense config's ``overrides`` (InternImage-T has layer scale
    1.0 there), without stochastic depth (a training setting, not part of the weights)."""
    from internimage.models.config import VARIANTS
    from internimage.models.internimage import upstream_arguments

    arguments = upstream_arguments(VARIANTS[variant].config)
    arguments.update(dict(overrides))
    arguments["drop_path_rate"] = 0.0
    return arguments


def released_file(file_name: str) -> Path:
    """Local copy of a released file of :data:`HUB_REPO` (the hub cache; endpoint
    ``$HF_ENDPOINT`` if set), downloaded once.

    Raises:
        WeightsUnavailableError: Not cached and not downloadable; the message says where to put
            the file.
    """
    return _hub_download(
        HUB_REPO, file_name, "main", os.environ.get("HF_ENDPOINT") or None, _default_cache_dir()
    )


def resolve_pretrained(variant: str, pretrained: bool | str | os.PathLike[str]) -> Path:
    """Local checkpoint file for ``create_model(..., pretrained=...)``.

    Args:
        variant: Model name (used when ``pretrained`` is True).
        pretrained: True (the released weights of ``variant`` from :data:`HUB_REPO`, endpoint
            ``$HF_ENDPOINT`` if set), an ``http(s)://`` URL, or a local path.

    Raises:
        ValueError: ``variant`` has no released weights.
        FileNotFoundError: A local path that does not exist.
    """
    if pretrained is True:
        if variant not in PRETRAINED:
            raise UsageError(
                f"{variant!r} has no released weights; variants with weights: "
                f"{', '.join(PRETRAINED)} (or pass a checkpoint path or URL as pretrained=...)"
            )
        return released_file(PRETRAINED[variant].file_name)
    text = os.fspath(pretrained)
    if text.startswith(("http://", "https://")):
        return download_checkpoint(text)
    path = Path(text).expanduser()
    if not path.is_file():
        raise MissingFileError(f"pretrained checkpoint not found: {path}")
    return path
