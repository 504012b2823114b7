"""Readers for the IDX format used by MNIST-style datasets (plain or gzip-compressed)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from internimage.errors import DataError

__all__ = ["read_idx", "write_idx"]

# Type codes of the IDX header (third byte) and the numpy types they store, big-endian on disk.
_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _open_bytes(path: Path) -> bytes:
    # The gzip magic number decides, not the file name: some mirrors ship uncompressed files
    # under a .gz name and the other way round.
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        return gzip.decompress(raw)
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or not) into an array in native byte order.

    Args:
        path: The file.

    Returns:
        The array with the shape from the header, e.g. ``[N, 28, 28]`` uint8 for images and ``[N]``
        uint8 for labels.

    Raises:
        ValueError: The file is not IDX or its size disagrees with its header.
    """
    path = Path(path)
    data = _open_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number {data[:4]!r})")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_TYPES:
        raise DataError(f"{path}: unknown IDX element type 0x{type_code:02x}")
    dtype = _IDX_TYPES[type_code]
    header_end = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data[4:header_end], dtype=">u4"))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header_end != expected:
        raise DataError(
            f"{path}: header shape {shape} needs {expected} bytes of data, "
            f"the file has {len(data) - header_end}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_end).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool = False) -> None:
    """Write an array as an IDX file (the inverse of :func:`read_idx`).

    Args:
        path: Destination.
        array: uint8, int8, int16, int32, float32 or float64 array of any rank up to 255.
        compress: gzip the file.
    """
    codes = {dt.newbyteorder("=").str: code for code, dt in _IDX_TYPES.items()}
    native = np.dtype(array.dtype).newbyteorder("=")
    if native.str not in codes and np.dtype(array.dtype).str not in codes:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    code = codes.get(native.str, codes.get(np.dtype(array.dtype).str))
    disk_dtype = _IDX_TYPES[code]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=disk_dtype).tobytes()
    if compress:
        payload = gzip.compress(payload, mtime=0)
    Path(path).write_bytes(payload)
