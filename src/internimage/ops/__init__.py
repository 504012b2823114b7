"""Operators: DCNv3 deformable sampling with reference, numba (CPU) and Triton (GPU) backends."""

from internimage.ops.backends import ENV_VAR, available_backends, use_backend
from internimage.ops.functional import dcnv3
from internimage.ops.geometry import DCNv3Geometry
from internimage.ops.reference import dcnv3_reference

__all__ = [
    "ENV_VAR",
    "DCNv3Geometry",
    "available_backends",
    "dcnv3",
    "dcnv3_reference",
    "use_backend",
]
