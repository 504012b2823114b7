"""Registry of the released ImageNet checkpoints and their download through a local cache."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from internimage.errors import (
    MissingDependencyError,
    MissingFileError,
    UsageError,
    WeightsUnavailableError,
)

__all__ = [
    "HUB_REPO",
    "classification_weights",
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
    """A released classification checkpoint and its evaluation preprocessing.

    Attributes:
        variant: Model name it belongs to.
        file_name: File in ``hub_repo``.
        input_size: ``(3, S, S)`` evaluation input.
        crop_fraction: Centre-crop fraction (resize the shorter side to S / fraction, crop S).
        interpolation: Resize interpolation.
        mean: Normalisation mean (RGB, 0-1 scale).
        std: Normalisation std.
        num_classes: Classifier outputs.
        license: Licence of the weights.
        hub_repo: Hugging Face repository of the file.
        release: The file's name in the catalogue (:mod:`internimage.catalog`).
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
    hub_repo: str = HUB_REPO
    release: str | None = None

    @property
    def url(self) -> str:
        """Download address on the Hugging Face hub."""
        return f"https://huggingface.co/{self.hub_repo}/resolve/main/{self.file_name}"


def classification_weights(release_name: str) -> PretrainedWeights:
    """Preprocessing and file of a released classifier of the catalogue.

    Raises:
        UsageError: No such release, or not a classifier.
    """
    from internimage.catalog.table import find_release
    from internimage.models.config import VARIANTS

    if release_name in VARIANTS and release_name not in PRETRAINED:
        raise UsageError(
            f"{release_name!r} has no released weights; variants with weights: "
            f"{', '.join(PRETRAINED)} (or pass a checkpoint path or URL)"
        )
    release = find_release(release_name)
    if release.task != "classification" or not isinstance(release.test_size, int):
        raise UsageError(f"{release.name} is a {release.task.replace('_', ' ')} model, not an "
                         f"image classifier")
    side = release.test_size
    return PretrainedWeights(
        variant=release.variant, file_name=release.file, input_size=(3, side, side),
        num_classes=release.num_classes, hub_repo=release.hub_repo, release=release.name,
    )


def _default_weights() -> dict[str, PretrainedWeights]:
    from internimage.catalog.table import RELEASES
    from internimage.models.config import VARIANTS

    return {
        release.default_for: classification_weights(release.name)
        for release in RELEASES.values()
        if release.default_for in VARIANTS and release.buildable
    }


#: Variant -> its default released ImageNet-1K classifier (the catalogue's ``default_for``).
PRETRAINED: dict[str, PretrainedWeights] = _default_weights()


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


def released_file(file_name: str, *, repo: str = HUB_REPO) -> Path:
    """Local copy of a released file (the hub cache; endpoint ``$HF_ENDPOINT`` if set),
    downloaded once.

    Args:
        file_name: The file in ``repo``.
        repo: The Hugging Face repository (InternImage's, or DCNv4's for FlashInternImage).

    Raises:
        WeightsUnavailableError: Not cached and not downloadable; the message says where to put
            the file.
    """
    return _hub_download(
        repo, file_name, "main", os.environ.get("HF_ENDPOINT") or None, _default_cache_dir()
    )


def resolve_pretrained(name: str, pretrained: bool | str | os.PathLike[str]) -> Path:
    """Local checkpoint file for ``create_model(..., pretrained=...)``.

    Args:
        name: A variant (its default released classifier, :data:`PRETRAINED`) or a released
            classifier's catalogue name; used when ``pretrained`` is True.
        pretrained: True (the released file through the Hugging Face cache, endpoint
            ``$HF_ENDPOINT`` if set), an ``http(s)://`` URL, or a local path.

    Raises:
        UsageError: ``name`` has no released weights.
        MissingFileError: A local path that does not exist.
    """
    if pretrained is True:
        weights = PRETRAINED.get(name) or classification_weights(name)
        return released_file(weights.file_name, repo=weights.hub_repo)
    text = os.fspath(pretrained)
    if text.startswith(("http://", "https://")):
        return download_checkpoint(text)
    path = Path(text).expanduser()
    if not path.is_file():
        raise MissingFileError(f"pretrained checkpoint not found: {path}")
    return path
