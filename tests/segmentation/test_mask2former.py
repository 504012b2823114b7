"""Mask2Former over InternImage: upstream's mmseg checkpoints through transformers (golden case),
strict loading, upstream's semantic inference, and the released models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="the seg extra is not installed")

from safetensors.torch import load_file  # noqa: E402

from internimage.catalog import RELEASES, list_pretrained  # noqa: E402
from internimage.errors import ConfigError  # noqa: E402
from internimage.models import CheckpointMismatchError  # noqa: E402
from internimage.ops import use_backend  # noqa: E402
from internimage.segmentation import (  # noqa: E402
    create_segmentation_model,
    mask2former_from_mmseg,
    mask2former_from_mmseg_config,
    mask2former_semantic_logits,
)


def _golden(golden_dir: Path) -> tuple[dict, Path, dict[str, torch.Tensor]]:
    config = json.loads((golden_dir / "mask2former_h_like.json").read_text())
    return (config, golden_dir / "mask2former_h_like.pth",
            load_file(str(golden_dir / "mask2former_h_like.safetensors")))


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    scale = max(1.0, float(want.abs().max()))
    return got.shape == want.shape and float((got - want).abs().max()) <= 1e-4 * scale


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_upstream_mask2former_checkpoint_reproduces_mmseg(golden_dir: Path, backend: str) -> None:
    config, checkpoint, expected = _golden(golden_dir)
    model = mask2former_from_mmseg(checkpoint, config)
    assert not model.training
    x = expected["input"]
    with use_backend(backend), torch.no_grad():
        out = model(pixel_values=x, output_auxiliary_logits=True)
        seg_logits = mask2former_semantic_logits(out, tuple(x.shape[-2:]))
    # Every decoder layer's predictions (layer 0: the learned queries), then the last.
    layers = [(a["class_queries_logits"], a["masks_queries_logits"])
              for a in out.auxiliary_logits]
    layers.append((out.class_queries_logits, out.masks_queries_logits))
    assert len(layers) == 10
    for i, (classes, masks) in enumerate(layers):
        assert _close(classes, expected[f"cls_pred_{i}"]), f"cls_pred_{i}"
        assert _close(masks, expected[f"mask_pred_{i}"]), f"mask_pred_{i}"
    assert _close(seg_logits, expected["seg_logits"])
    assert torch.equal(seg_logits.argmax(1), expected["seg_pred"])


def test_a_checkpoint_that_does_not_fit_lists_the_keys(golden_dir: Path) -> None:
    config, checkpoint, _ = _golden(golden_dir)
    state = dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    del state["decode_head.mask_embed.2.weight"]
    state["decode_head.cls_embed.bias"] = torch.zeros(5)
    state["decode_head.conv_seg.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as info:
        mask2former_from_mmseg({"state_dict": state}, config)
    message = str(info.value)
    assert "model.transformer_module.decoder.mask_predictor.mask_embedder.1.0.weight" in message
    assert "class_predictor.bias checkpoint [5] vs model [13]" in message
    assert "decode_head.conv_seg.weight" in message


def test_heads_transformers_cannot_express_are_refused(golden_dir: Path) -> None:
    config, _, _ = _golden(golden_dir)
    changed = json.loads(json.dumps(config))
    changed["decode_head"]["enforce_decoder_input_project"] = True
    with pytest.raises(ConfigError, match="enforce_decoder_input_project"):
        mask2former_from_mmseg_config(changed)


def test_the_released_mask2former_models_are_built_with_their_heads() -> None:
    names = list_pretrained(method="mask2former")
    assert len(names) == 11 and all(RELEASES[n].buildable for n in names)
    # Parameters of the built upstream models (the manifests' counts).
    expected = {"mask2former_internimage_h_896_80k_cocostuff2ade20k": 1313.50,
                "mask2former_internimage_h_480_40k_nyu": 1093.87,
                "mask2former_flash_internimage_t_512_160k_ade20k_ss": None}
    for name, millions in expected.items():
        with torch.device("meta"):
            model = create_segmentation_model(name)
        head = RELEASES[name].head_arguments()
        assert model.config.hidden_dim == head["hidden_dim"]
        assert model.config.num_queries == head["num_queries"]
        params = sum(p.numel() for p in model.parameters()) / 1e6
        if millions is not None:
            assert params == pytest.approx(millions, abs=0.01), name
