"""Checkpoint loading, pretrained registry and the download path (local HTTP server)."""

from __future__ import annotations

import hashlib
import http.server
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from internimage.errors import CheckpointFileError
from internimage.models import (
    PRETRAINED,
    CheckpointMismatchError,
    PretrainedWeights,
    create_model,
    load_checkpoint,
)
from internimage.models.checkpoint import read_checkpoint
from internimage.models.pretrained import HUB_REPO, resolve_pretrained

NAME = "internimage_atto"


def _state(num_classes: int = 1000) -> dict[str, torch.Tensor]:
    torch.manual_seed(11)
    model = create_model(NAME, num_classes=num_classes)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model.state_dict()


def _same(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_layouts_and_prefixes(tmp_path: Path) -> None:
    state = _state()
    layouts = {
        "model": {"model": state, "epoch": 3},
        "state_dict": {"state_dict": state},
        "raw": state,
        "module": {"model": {f"module.{k}": v for k, v in state.items()}},
        "backbone": {"state_dict": {f"module.backbone.{k}": v for k, v in state.items()}},
    }
    model = create_model(NAME)
    for layout, checkpoint in layouts.items():
        path = tmp_path / f"{layout}.pth"
        torch.save(checkpoint, path)
        model.reset_classifier(1000)
        assert not _same(model, state)
        assert load_checkpoint(model, path).ok
        assert _same(model, state), layout
        model.reset_classifier(1000)
        load_checkpoint(model, checkpoint)
        assert _same(model, state), layout


def test_safetensors_file(tmp_path: Path) -> None:
    state = _state()
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = create_model(NAME)
    load_checkpoint(model, path)
    assert _same(model, state)


@pytest.mark.parametrize("zip_format", [True, False])
def test_mapped_reading_gives_the_same_payload(tmp_path: Path, zip_format: bool) -> None:
    """mmap=True maps a zip-format file and reads a legacy one, with the same contents."""
    state = _state()
    path = tmp_path / "run.pt"
    torch.save({"task": "segmentation", "model": state}, path,
               _use_new_zipfile_serialization=zip_format)
    mapped, read = read_checkpoint(path, mmap=True), read_checkpoint(path)
    assert mapped["task"] == read["task"] == "segmentation"
    assert mapped["model"].keys() == state.keys()
    assert all(torch.equal(mapped["model"][k], read["model"][k]) for k in state)


class _Payload:
    """Not a tensor container: weights_only loading must refuse it."""


def test_pickles_are_loaded_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": _state(), "extra": _Payload()}, path)
    # Refused with the file named, and without torch's advice to load it with weights_only=False.
    with pytest.raises(CheckpointFileError, match=r"evil\.pth holds Python objects") as info:
        load_checkpoint(create_model(NAME), path)
    assert "weights_only" not in str(info.value)


def test_mismatch_lists_missing_unexpected_and_shapes() -> None:
    state = _state()
    del state["levels.1.blocks.0.mlp.fc1.bias"]
    state["levels.9.extra"] = torch.zeros(2)
    state["head.weight"] = torch.zeros(10, state["head.weight"].shape[1])
    model = create_model(NAME)
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(model, state)
    message = str(info.value)
    assert "missing keys (1): levels.1.blocks.0.mlp.fc1.bias" in message
    assert "unexpected keys (1): levels.9.extra" in message
    width = state["head.weight"].shape[1]
    assert f"head.weight checkpoint [10, {width}] vs model [1000, {width}]" in message
    before = model.state_dict()["head.weight"].clone()
    result = load_checkpoint(model, state, strict=False)
    assert result.missing == ("levels.1.blocks.0.mlp.fc1.bias",)
    assert [k for k, _, _ in result.mismatched] == ["head.weight"]
    assert torch.equal(model.head.weight, before)  # the wrongly shaped tensor was skipped
    assert torch.equal(model.patch_embed.conv1.weight, state["patch_embed.conv1.weight"])
    with pytest.raises(FileNotFoundError):
        load_checkpoint(model, "/nonexistent/ckpt.pth")


def test_load_into_meta_model_assigns() -> None:
    state = _state()
    with torch.device("meta"):
        model = create_model(NAME)
    load_checkpoint(model, state)
    assert not any(p.is_meta for p in model.parameters())
    assert _same(model, state)


def test_registry_lists_the_released_checkpoints() -> None:
    assert set(PRETRAINED) == {
        "internimage_t", "internimage_s", "internimage_b", "internimage_l", "internimage_xl",
        "internimage_h", "internimage_g", "flash_internimage_t", "flash_internimage_s",
        "flash_internimage_b", "flash_internimage_l",
    }
    flash = PRETRAINED["flash_internimage_l"]
    # The hub's file name (upstream's README links flash_internimage_l_22kto1k_384.pth).
    assert flash.url == ("https://huggingface.co/OpenGVLab/DCNv4/resolve/main/"
                         "flash_intern_image_l_22kto1k_384.pth")
    t = PRETRAINED["internimage_t"]
    assert t.url == "https://huggingface.co/OpenGVLab/InternImage/resolve/main/internimage_t_1k_224.pth"
    assert PRETRAINED["internimage_h"].input_size == (3, 640, 640)
    assert PRETRAINED["internimage_g"].file_name == "internimage_g_22kto1k_512.pth"
    for weights in PRETRAINED.values():
        assert weights.license == "MIT" and weights.crop_fraction == 1.0
        assert weights.interpolation == "bicubic" and weights.num_classes == 1000
        assert weights.mean == (0.485, 0.456, 0.406) and weights.std == (0.229, 0.224, 0.225)
    assert create_model("internimage_atto").pretrained_cfg is None
    with torch.device("meta"):
        assert create_model("internimage_t").pretrained_cfg is t
    with pytest.raises(ValueError, match="no released weights"):
        create_model(NAME, pretrained=True)


def test_missing_huggingface_hub_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match=r"internimage\[hub\]"):
        resolve_pretrained("internimage_t", True)


@pytest.fixture()
def file_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, bytes], list[str]]]:
    """Local server answering HEAD/GET for /<path> from a dict, like the hub's resolve URLs."""
    files: dict[str, bytes] = {}
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _headers(self) -> bytes | None:
            body = files.get(self.path)
            if body is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", '"' + hashlib.sha256(body).hexdigest() + '"')
            self.send_header("X-Repo-Commit", "0" * 40)
            self.end_headers()
            return body

        def do_HEAD(self) -> None:  # noqa: N802
            requests.append("HEAD " + self.path)
            self._headers()

        def do_GET(self) -> None:  # noqa: N802
            requests.append("GET " + self.path)
            body = self._headers()
            if body is not None:
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", files, requests
    finally:
        server.shutdown()
        server.server_close()


def _offline_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, endpoint: str) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                "all_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("INTERNIMAGE_CACHE", str(tmp_path / "urls"))


def test_pretrained_download_through_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_server: tuple
) -> None:
    endpoint, files, requests = file_server
    _offline_env(monkeypatch, tmp_path, endpoint)
    state = _state()
    local = tmp_path / "upstream.pth"
    torch.save({"model": state}, local)
    files[f"/{HUB_REPO}/resolve/main/atto_test.pth"] = local.read_bytes()
    monkeypatch.setitem(
        PRETRAINED, NAME, PretrainedWeights(NAME, "atto_test.pth", (3, 224, 224))
    )

    model = create_model(NAME, pretrained=True)
    assert _same(model, state)
    assert any(p.name == "atto_test.pth" for p in (tmp_path / "hub").rglob("*.pth"))
    assert f"GET /{HUB_REPO}/resolve/main/atto_test.pth" in requests

    # A new head for another class count keeps the backbone weights.
    five = create_model(NAME, pretrained=True, num_classes=5)
    assert five.head.out_features == 5
    assert torch.equal(five.levels[2].blocks[0].dcn.offset.weight,
                       state["levels.2.blocks.0.dcn.offset.weight"])
    features = create_model(NAME, pretrained=True, features_only=True, out_indices=(2,))
    assert torch.equal(features.patch_embed.conv1.weight, state["patch_embed.conv1.weight"])

    # Hub-style URL: same cache; a plain URL: our own cache; a local path: read directly.
    url_model = create_model(NAME, pretrained=f"{endpoint}/{HUB_REPO}/resolve/main/atto_test.pth")
    assert _same(url_model, state)
    files["/plain/weights.pth"] = local.read_bytes()
    plain = create_model(NAME, pretrained=f"{endpoint}/plain/weights.pth")
    assert _same(plain, state)
    assert list((tmp_path / "urls").rglob("weights.pth"))
    gets = sum(r == "GET /plain/weights.pth" for r in requests)
    create_model(NAME, pretrained=f"{endpoint}/plain/weights.pth")
    assert sum(r == "GET /plain/weights.pth" for r in requests) == gets  # served from cache
    assert _same(create_model(NAME, pretrained=str(local)), state)
    with pytest.raises(FileNotFoundError):
        create_model(NAME, pretrained=str(tmp_path / "absent.pth"))


def test_backbone_weights_come_from_classifiers_and_dense_models(tmp_path: Path) -> None:
    from internimage.models.checkpoint import load_backbone_weights

    classifier = create_model(NAME, num_classes=10, depths=(1, 1, 2, 1))
    with torch.no_grad():
        for p in classifier.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / "best.pt"
    torch.save({"model": classifier.state_dict(), "epoch": 3}, path)

    features = create_model(NAME, features_only=True, depths=(1, 1, 2, 1))
    result = load_backbone_weights(features, path)
    assert result.ok
    wanted = classifier.state_dict()
    for key, value in features.state_dict().items():
        assert torch.equal(value, wanted[key]), key
    # A dense model's checkpoint (decoder keys beside "backbone.") gives the same backbone.
    dense = {f"backbone.{k}": v for k, v in features.state_dict().items()}
    dense["decode_head.conv_seg.weight"] = torch.zeros(3, 8, 1, 1)
    again = create_model(NAME, features_only=True, depths=(1, 1, 2, 1))
    load_backbone_weights(again, {"state_dict": dense})
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                 features.state_dict().values(), strict=True))

    # Upstream's dense T adds layer scale to a classifier without: the scales keep their 1.0.
    scaled = create_model(NAME, features_only=True, depths=(1, 1, 2, 1), layer_scale=1.0)
    result = load_backbone_weights(scaled, path)
    assert result.missing and all(k.endswith((".gamma1", ".gamma2")) for k in result.missing)
    assert all(scaled.state_dict()[k].eq(1.0).all() for k in result.missing)
    assert torch.equal(scaled.state_dict()["patch_embed.conv1.weight"],
                       wanted["patch_embed.conv1.weight"])

    deeper = create_model(NAME, features_only=True, depths=(1, 1, 3, 1))
    with pytest.raises(CheckpointMismatchError, match=r"levels\.2\.blocks\.2\..*"):
        load_backbone_weights(deeper, path)
    wider = create_model(NAME, features_only=True, depths=(1, 1, 2, 1), channels=48,
                         groups=(3, 6, 12, 24))
    with pytest.raises(CheckpointMismatchError, match=r"wrongly shaped"):
        load_backbone_weights(wider, path)


def test_a_features_only_model_takes_a_classifier_without_its_layer_scales(
    tmp_path: Path,
) -> None:
    # Upstream's dense InternImage-T: layer scale 1.0 over the T classifier, which has none.
    classifier = create_model(NAME, num_classes=10, depths=(1, 1, 1, 1))
    path = tmp_path / "classifier.pth"
    torch.save({"model": classifier.state_dict()}, path)
    features = create_model(NAME, features_only=True, pretrained=path, depths=(1, 1, 1, 1),
                            layer_scale=1.0)
    state = features.state_dict()
    assert torch.equal(state["patch_embed.conv1.weight"],
                       classifier.state_dict()["patch_embed.conv1.weight"])
    assert all(v.eq(1.0).all() for k, v in state.items() if k.endswith((".gamma1", ".gamma2")))
