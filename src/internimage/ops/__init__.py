"""Operators: DCNv3 and DCNv4 deformable sampling with reference, numba and Triton kernels."""

from internimage.ops.backends import ENV_VAR, available_backends, use_backend
from internimage.ops.functional import dcnv3, dcnv4
from internimage.ops.geometry import DCNv3Geometry
from internimage.ops.reference import dcnv3_reference, dcnv4_reference

__all__ = [
    "ENV_VAR",
    "DCNv3Geometry",
    "available_backends",
    "dcnv3",
    "dcnv3_reference",
    "dcnv4",
    "dcnv4_reference",
    "use_backend",
]
