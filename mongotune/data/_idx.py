"""Reader for the IDX format of MNIST and Fashion-MNIST (optionally gzip'd).

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number
of dimensions), one big-endian uint32 per dimension, then the values in C
order.  See http://yann.lecun.com/exdb/mnist/ (section "file formats").
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from mongotune.errors import DataError

_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path, dataset: str) -> bytes:
    with open(path, "rb") as fh:
        head = fh.read(2)
        fh.seek(0)
        if head != _GZIP_MAGIC:
            return fh.read()
        try:
            with gzip.GzipFile(fileobj=fh) as gz:
                return gz.read()
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
            raise DataError(
                f"{dataset}: {path.name} is truncated or corrupt (gzip: {exc}); "
                "delete it or pass --source"
            ) from exc


def read_idx(path: Path | str, *, dataset: str = "idx") -> np.ndarray:
    """Return the array stored in an IDX file (native byte order)."""
    path = Path(path)
    raw = _read_bytes(path, dataset)
    bad = f"{dataset}: {path.name} is not a valid IDX file"
    if len(raw) < 4:
        raise DataError(f"{bad} (only {len(raw)} bytes)")
    zero1, zero2, code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero1 or zero2 or code not in _TYPES or not 1 <= ndim <= 4:
        raise DataError(f"{bad} (bad magic number {raw[:4].hex()})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{dataset}: {path.name} is truncated (header cut short)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _TYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "corrupt"
        raise DataError(
            f"{dataset}: {path.name} is {what} (dimensions {'x'.join(map(str, dims))} need "
            f"{expected} data bytes, found {got}); delete it or pass --source"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=False)
