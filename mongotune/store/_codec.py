"""Make documents storable on every backend, and read them back.

MongoDB stores NaN and +/-inf, but the embedded SQLite-backed server rejects
them.  Trial results legitimately hold NaN losses, so every document written
by the store passes through ``encode`` and every document read through
``decode``; a non-finite float becomes ``{"__float__": "nan"}`` (or ``"inf"``,
``"-inf"``) in the database on every backend, so the stored data do not
depend on which server holds them.

``encode`` also turns numpy scalars and arrays and tuples into plain BSON
types, the job hyperopt's ``SONify`` does for results.
"""

from __future__ import annotations

import math
from typing import Any

_TAG = "__float__"
_NAMES = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _float_tag(x: float) -> dict[str, str]:
    if math.isnan(x):
        return {_TAG: "nan"}
    return {_TAG: "inf" if x > 0 else "-inf"}


def encode(obj: Any) -> Any:
    """Return a copy of ``obj`` that any MongoDB-wire server accepts."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, bytes, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else _float_tag(obj)
    if isinstance(obj, dict):
        return {k: encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    if type(obj).__module__ == "numpy":  # numpy scalars and arrays, without importing numpy here
        return encode(obj.tolist() if hasattr(obj, "tolist") else obj.item())
    return obj


def decode(obj: Any) -> Any:
    """Inverse of ``encode`` for the non-finite float tags (in place-safe copy)."""
    if isinstance(obj, dict):
        if len(obj) == 1 and _TAG in obj and obj[_TAG] in _NAMES:
            return _NAMES[obj[_TAG]]
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    return obj


def encode_update(update: dict) -> dict:
    """Encode the operands of an update document (``{"$set": {...}}``)."""
    return {op: encode(val) for op, val in update.items()}
