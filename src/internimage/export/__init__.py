"""Export to deployment formats: ONNX graphs of standard operators (:func:`export_onnx`).

Needs the ``onnx`` extra (``pip install 'internimage[onnx]'``), imported only when an export runs.
"""

from internimage.export.onnx import (
    DEFAULT_OPSET,
    MIN_OPSET,
    OnnxExportReport,
    detector_error,
    export_onnx,
    require_onnx,
)

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "OnnxExportReport",
    "detector_error",
    "export_onnx",
    "require_onnx",
]
