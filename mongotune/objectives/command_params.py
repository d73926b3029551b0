"""The ``--param NAME:SPEC`` grammar of command studies: a JSON search space from the command line.

    ``lr:1e-4:1e-1``            uniform on [1e-4, 1e-1]
    ``lr:1e-4:1e-1:log``        log-uniform
    ``layers:1:6:int``          integers 1..6 (quniform, q=1, as ints)
    ``drop:0:0.5:q=0.05``       quantised: multiples of 0.05
    ``lr:1e-4:1e-1:log:q=1e-4`` quantised log-uniform (``log:int`` works too)
    ``opt:adam,sgd,rmsprop``    categorical (numbers are read as numbers)
    ``epochs:20``               a constant (still filled in and passed on)
"""

from __future__ import annotations

import math
import re
from typing import Any

from ..errors import ConfigError


def _number(text: str, what: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--param {spec}: {what} {text!r} is not a number"
                          + (f" (for a categorical param write {spec.split(':', 1)[0]}:a,b,c)"
                             if what == "low" else "")) from None
    if not math.isfinite(value):
        raise ConfigError(f"--param {spec}: {what} must be finite")
    return value


def _option(text: str) -> Any:
    """A categorical option as typed: ints and floats become numbers, anything else stays a string."""
    t = text.strip()
    for conv in (int, float):
        try:
            value = conv(t)
        except ValueError:
            continue
        if conv is float and not math.isfinite(value):
            break
        return value
    return t


def parse_param(spec: str) -> tuple[str, Any]:
    """Parse one ``--param NAME:SPEC`` into ``(name, JSON space node)`` (see the module docstring)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"--param {spec!r}: expected NAME:LOW:HIGH[:log][:int][:q=STEP], NAME:A,B,C or NAME:VALUE")
    name, rest = (s.strip() for s in spec.split(":", 1))
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ConfigError(f"--param {spec}: {name!r} is not a param name (letters, digits, _; not starting with a digit)")
    if not rest:
        raise ConfigError(f"--param {spec}: nothing after {name}:")
    if "," in rest:
        options = [_option(o) for o in rest.split(",")]
        if any(o == "" for o in options):
            raise ConfigError(f"--param {spec}: an empty option in the list")
        if len(set(map(repr, options))) != len(options):
            raise ConfigError(f"--param {spec}: an option is listed twice")
        return name, {"hp": "choice", "options": options}
    parts = [p.strip() for p in rest.split(":")]
    if len(parts) == 1:
        return name, _option(parts[0])
    low = _number(parts[0], "low", spec)
    high = _number(parts[1], "high", spec)
    log = is_int = False
    q = None
    for mod in parts[2:]:
        if mod == "log" and not log:
            log = True
        elif mod == "int" and not is_int:
            is_int = True
        elif mod.startswith("q=") and q is None:
            q = _number(mod[2:], "q", spec)
            if q <= 0:
                raise ConfigError(f"--param {spec}: q must be > 0")
        else:
            raise ConfigError(f"--param {spec}: unknown or repeated modifier {mod!r} (use log, int, q=STEP)")
    if high <= low:
        raise ConfigError(f"--param {spec}: low must be < high")
    if log and low <= 0:
        raise ConfigError(f"--param {spec}: a log scale needs low > 0")
    if is_int:
        q = q if q is not None else 1.0
        if q != int(q):
            raise ConfigError(f"--param {spec}: int needs a whole q")
    node: dict[str, Any] = {"hp": ("qloguniform" if log else "quniform") if q is not None
                            else ("loguniform" if log else "uniform"), "low": low, "high": high}
    if q is not None:
        node["q"] = q
    if is_int:
        node["int"] = True
        node["low"], node["high"], node["q"] = int(low) if low == int(low) else low, \
            int(high) if high == int(high) else high, int(q)
    return name, node


def parse_params(specs: list[str] | tuple[str, ...], base: dict | None = None) -> dict:
    """Build a JSON space from ``--param`` specs, on top of ``base`` (a ``--space`` file's JSON)."""
    space = dict(base or {})
    for spec in specs:
        name, node = parse_param(spec)
        if name in space:
            raise ConfigError(f"--param {spec}: {name} is defined twice")
        space[name] = node
    return space
