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


def _number(spec: dict, key: str, path: str) -> float:
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"space: {path}: {key} must be a finite number, got {value!r}")
    return float(value)


def _check_node(spec: dict, path: str) -> None:
    kind = spec.get("hp")
    if kind not in _KINDS:
        raise ConfigError(f"space: {path or '<root>'}: unknown hp kind {kind!r} (choose from {', '.join(_KINDS)})")
    missing = [k for k in _KINDS[kind] if k not in spec]
    if missing:
        raise ConfigError(f"space: {path}: {kind} needs {', '.join(missing)}")
    if kind == "choice":
        opts = spec["options"]
        if not isinstance(opts, list) or not opts:
            raise ConfigError(f"space: {path}: choice needs a non-empty list of options")
        for i, o in enumerate(opts):
            check(o, f"{path}[{i}]")
        return
    values = {k: _number(spec, k, path) for k in _KINDS[kind]}
    if kind in ("loguniform", "qloguniform") and (values["low"] <= 0 or values["high"] <= values["low"]):
        raise ConfigError(f"space: {path}: {kind} needs 0 < low < high (natural units)")
    if kind in ("uniform", "quniform", "randint") and values["high"] <= values["low"]:
        raise ConfigError(f"space: {path}: {kind} needs low < high")
    if "q" in values and values["q"] <= 0:
        raise ConfigError(f"space: {path}: q must be > 0")
    if "sigma" in values and values["sigma"] <= 0:
        raise ConfigError(f"space: {path}: sigma must be > 0")


def check(spec: Any, path: str = "") -> None:
    """Validate a JSON space description without importing hyperopt (fast, for input checks)."""
    if isinstance(spec, dict):
        if "hp" in spec:
            _check_node(spec, path)
            return
        for k, v in spec.items():
            check(v, f"{path}.{k}" if path else k)
    elif isinstance(spec, list):
        for i, v in enumerate(spec):
            check(v, f"{path}[{i}]")


def _node(spec: dict, path: str) -> Any:
    from hyperopt import hp
    from hyperopt.pyll import scope

    kind = spec["hp"]
    label = spec.get("label", path)
    if kind == "choice":
        node = hp.choice(label, [_build(o, f"{path}[{i}]") for i, o in enumerate(spec["options"])])
    elif kind in ("loguniform", "qloguniform"):
        low, high = float(spec["low"]), float(spec["high"])
        # ``log_low``/``log_high`` (written by ``to_json``) keep hyperopt's own bounds bit for bit
        log_low = float(spec.get("log_low", math.log(low)))
        log_high = float(spec.get("log_high", math.log(high)))
        args = (log_low, log_high) + ((float(spec["q"]),) if kind == "qloguniform" else ())
        node = getattr(hp, kind)(label, *args)
    elif kind == "randint":
        node = hp.randint(label, int(spec["low"]), int(spec["high"]))
    else:
        node = getattr(hp, kind)(label, *[float(spec[k]) for k in _KINDS[kind]])
    if spec.get("int"):
        node = scope.int(node)
    return node


def _build(spec: Any, path: str) -> Any:
    if isinstance(spec, dict):
        if "hp" in spec:
            return _node(spec, path)
        return {k: _build(v, f"{path}.{k}" if path else k) for k, v in spec.items()}
    if isinstance(spec, list):
        return [_build(v, f"{path}[{i}]") for i, v in enumerate(spec)]
    return spec


def build(spec: Any, path: str = "") -> Any:
    """Turn a JSON space description into a hyperopt space."""
    check(spec, path)
    return _build(spec, path)


def load_space_file(path: str | Path) -> dict:
    """Read and validate a JSON space file; return the JSON (not yet built).  Needs no hyperopt."""
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
    check(spec)  # validate now, with the file name in the error
    return spec


# ====================================================================== hyperopt space -> JSON
_DISTRIBUTIONS = {  # hyperopt's node name -> (our kind, its argument names)
    "uniform": ("uniform", ("low", "high")),
    "quniform": ("quniform", ("low", "high", "q")),
    "loguniform": ("loguniform", ("low", "high")),
    "qloguniform": ("qloguniform", ("low", "high", "q")),
    "normal": ("normal", ("mu", "sigma")),
    "qnormal": ("qnormal", ("mu", "sigma", "q")),
    "lognormal": ("lognormal", ("mu", "sigma")),
}


def to_json(space: Any) -> Any:
    """The JSON description of a hyperopt space (the inverse of ``build``).

    Studies store their resolved space this way, so the coordinator rebuilds
    exactly the same space (same labels, same ranges) without importing the
    model code, TensorFlow or the dataset.  Supports the node kinds ``build``
    knows, with ``scope.int`` around any of them; anything else (``pchoice``,
    arithmetic on hyper-parameters) raises ConfigError.
    """
    from hyperopt.pyll import as_apply

    return _node_json(as_apply(space))


def _lit(node) -> Any:
    from hyperopt.pyll.base import Literal

    if not isinstance(node, Literal):
        raise ConfigError(f"space: expected a constant, got a {node.name} expression")
    return node.obj


def _node_json(node) -> Any:
    from hyperopt.pyll.base import Literal

    if isinstance(node, Literal):
        obj = node.obj
        if isinstance(obj, (list, tuple)):
            return [_node_json_any(v) for v in obj]
        if isinstance(obj, dict):
            return {k: _node_json_any(v) for k, v in obj.items()}
        return obj
    name = node.name
    if name == "dict":
        return {k: _node_json(v) for k, v in node.named_args}
    if name == "pos_args":
        return [_node_json(v) for v in node.pos_args]
    if name == "float":
        return _node_json(node.pos_args[0])
    if name == "int":
        inner = _node_json(node.pos_args[0])
        if not (isinstance(inner, dict) and "hp" in inner):
            raise ConfigError("space: scope.int must wrap a hyper-parameter")
        return {**inner, "int": True}
    if name == "switch":
        param = node.pos_args[0]
        if param.name != "hyperopt_param":
            raise ConfigError("space: a choice must be indexed by a hyper-parameter")
        label = _lit(param.pos_args[0])
        dist = param.pos_args[1]
        if dist.name != "randint":
            raise ConfigError(f"space: choice {label!r} uses {dist.name}, which JSON spaces cannot express")
        return {"hp": "choice", "label": label, "options": [_node_json(o) for o in node.pos_args[1:]]}
    if name == "hyperopt_param":
        label = _lit(node.pos_args[0])
        dist = node.pos_args[1]
        args = dict(dist.named_args)
        values = [_lit(a) for a in dist.pos_args]
        if dist.name == "randint":
            low, high = (0, values[0]) if len(values) == 1 else values[:2]
            if "low" in args:
                low = _lit(args["low"])
            if "high" in args:
                high = _lit(args["high"])
            return {"hp": "randint", "label": label, "low": int(low), "high": int(high)}
        if dist.name not in _DISTRIBUTIONS:
            raise ConfigError(f"space: {label!r} uses {dist.name}, which JSON spaces cannot express")
        kind, names = _DISTRIBUTIONS[dist.name]
        spec: dict[str, Any] = {"hp": kind, "label": label}
        for i, key in enumerate(names):
            value = values[i] if i < len(values) else _lit(args[key])
            spec[key] = float(value)
        if kind in ("loguniform", "qloguniform"):  # hyperopt keeps log-space bounds; JSON has natural units
            spec["log_low"], spec["log_high"] = spec["low"], spec["high"]
            spec["low"], spec["high"] = math.exp(spec["low"]), math.exp(spec["high"])
        return spec
    raise ConfigError(f"space: {name} expressions cannot be stored as JSON")


def _node_json_any(value: Any) -> Any:
    from hyperopt.pyll.base import Apply

    return _node_json(value) if isinstance(value, Apply) else (
        [_node_json_any(v) for v in value] if isinstance(value, (list, tuple)) else value)
