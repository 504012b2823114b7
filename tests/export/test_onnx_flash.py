"""FlashInternImage to ONNX: DCNv4 written with standard operators, checked in onnxruntime."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import internimage

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

from internimage.export import export_onnx  # noqa: E402


@pytest.mark.slow
def test_a_tiny_flash_internimage_exports_with_standard_operators(tmp_path: Path) -> None:
    import onnx

    model = internimage.create_model("flash_internimage_atto", num_classes=5,
                                     depths=(1, 1, 1, 1), dw_kernel_size=3).eval()
    with torch.no_grad():
        for p in model.parameters():
            # Offsets and point weights away from their zero start.
            p.add_(torch.randn_like(p) * 0.02)
    report = export_onnx(model, tmp_path / "flash.onnx", input_shape=(2, 3, 64, 96))
    # export_onnx writes the file only after onnxruntime reproduced PyTorch's output.
    assert report.max_abs_error <= 1e-4 and report.output_names == ("logits",)
    graph = onnx.load(str(tmp_path / "flash.onnx")).graph
    ops = {node.op_type for node in graph.node}
    assert "GridSample" in ops and all(node.domain in ("", "ai.onnx") for node in graph.node)
