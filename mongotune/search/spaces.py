"""Search spaces as plain JSON, so studies carry them without pickles.

A space file is a JSON object whose leaves are either constants or
hyper-parameter nodes ``{"hp": KIND, ...}``:

    {"learning_rate": {"hp": "loguniform", "low": 1e-4, "high": 1.0},
     "num_layers":    {"hp": "quniform", "low": 1, "high": 8, "q": 1, "int": true},
     "optimizer":     {"hp": "choice", "options": ["adam", "nadam"]},
     "conv":          {"hp": "choice", "options": [{"blocks": 0},
                                                   {"blocks": {"hp": "randint", "low": 1, "high": 4}}]}}

``low``/``high`` of log-scaled kinds are given in natural units (1e-4, not
log(1e-4)).  Every node's label is its path (``conv.blocks``) unless a
``"label"`` is given.  ``choice`` options may nest further nodes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hyperopt import hp
from hyperopt.pyll import scope

from ..errors import ConfigError

_KINDS = {
    "choice": ("options",),
    "uniform": ("low", "high"),
    "quniform": ("low", "high", "q"),
    "loguniform": ("low", "high"),
    "qloguniform": ("low", "high", "q"),
    "normal": ("mu", "sigma"),
    "qnormal": ("mu", "sigma", "q"),
    "lognormal": ("mu", "sigma"),
    "randint": ("low", "high"),
}


def _node(spec: dict, path: str) -> Any:
    kind = spec.get("hp")
    if kind not in _KINDS:
        raise ConfigError(f"space: {path or '<root>'}: unknown hp kind {kind!r} (choose from {', '.join(_KINDS)})")
    missing = [k for k in _KINDS[kind] if k not in spec]
    if missing:
        raise ConfigError(f"space: {path}: {kind} needs {', '.join(missing)}")
    label = spec.get("label", path)
    try:
        if kind == "choice":
            opts = spec["options"]
            if not isinstance(opts, list) or not opts:
                raise ConfigError(f"space: {path}: choice needs a non-empty list of options")
            node = hp.choice(label, [build(o, f"{path}[{i}]") for i, o in enumerate(opts)])
        elif kind in ("loguniform", "qloguniform"):
            low, high = float(spec["low"]), float(spec["high"])
            if low <= 0 or high <= low:
                raise ConfigError(f"space: {path}: {kind} needs 0 < low < high (natural units)")
            args = (math.log(low), math.log(high)) + ((float(spec["q"]),) if kind == "qloguniform" else ())
            node = getattr(hp, kind)(label, *args)
        elif kind == "randint":
            node = hp.randint(label, int(spec["low"]), int(spec["high"]))
        else:
            args = [float(spec[k]) for k in _KINDS[kind]]
            if kind in ("uniform", "quniform") and args[1] <= args[0]:
                raise ConfigError(f"space: {path}: {kind} needs low < high")
            node = getattr(hp, kind)(label, *args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"space: {path}: {exc}") from None
    if spec.get("int"):
        node = scope.int(node)
    return node


def build(spec: Any, path: str = "") -> Any:
    """Turn a JSON space description into a hyperopt space."""
    if isinstance(spec, dict):
        if "hp" in spec:
            return _node(spec, path)
        return {k: build(v, f"{path}.{k}" if path else k) for k, v in spec.items()}
    if isinstance(spec, list):
        return [build(v, f"{path}[{i}]") for i, v in enumerate(spec)]
    return spec


def load_space_file(path: str | Path) -> dict:
    """Read and validate a JSON space file; return the JSON (not yet built)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"space file {p}: {exc.strerror}") from None
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"space file {p}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"space file {p}: the top level must be a JSON object")
    build(spec)  # validate now, with the file name in the error
    return spec
