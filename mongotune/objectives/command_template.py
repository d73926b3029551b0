"""A command study's template: placeholders checked at launch, filled for each trial (see ``command``).

``{name}`` and Spell's ``:name:`` name a param (``{a.b}`` reaches into a
nested one; ``{{`` and ``}}`` are literal braces).  Each argument reaches the
child as one argv element; in a script that a template hands to a shell, a
value is quoted for where its placeholder stands, and refused where no
quoting is safe (``_shell``).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, TrialFailure
from . import _shell

_NAME = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_NAME_RE = re.compile(rf"^{_NAME}$")
_BRACE_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_COLON_RE = re.compile(rf":({_NAME}):")


def split_command(template: str) -> list[str]:
    """Split a command string into argv the way a POSIX shell would (quotes respected, nothing expanded)."""
    try:
        argv = shlex.split(template)
    except ValueError as exc:
        raise ConfigError(f"command: cannot split {template!r}: {exc}") from None
    if not argv:
        raise ConfigError("command: the command is empty")
    return argv



def _lookup(params: dict, name: str) -> Any:
    value: Any = params
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(name)
        value = value[part]
    return value


def format_value(value: Any) -> str:
    """How a param value is written into a command argument."""
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict, tuple)):
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalars
        return format_value(value.item())
    return str(value)


@dataclass(frozen=True)
class _Slot:
    """A placeholder in an argument: the param it names and how the template wrote it."""

    name: str
    text: str


def _pieces(arg: str, known: set[str] | None, whole_colon_strict: bool = True) -> list[str | _Slot]:
    """One argument as literal text and placeholders (``{{``/``}}`` already turned into braces).

    ``known`` (the space's names) decides which ``:name:`` are placeholders;
    an unknown ``{name}`` raises ConfigError.
    """
    out: list[str | _Slot] = []

    def colons(segment: str) -> None:
        pos = 0
        for m in _COLON_RE.finditer(segment):
            name = m.group(1)
            if known is not None and name.split(".")[0] not in known:
                if whole_colon_strict and m.group(0) == arg:
                    raise ConfigError(f"command: placeholder :{name}: has no --param (params: "
                                      f"{', '.join(sorted(known)) or 'none'})")
                continue
            out.extend([segment[pos:m.start()], _Slot(name, m.group(0))])
            pos = m.end()
        out.append(segment[pos:])

    pos = 0
    for m in _BRACE_RE.finditer(arg):
        colons(arg[pos:m.start()])
        pos = m.end()
        token = m.group(0)
        if token in ("{{", "}}"):
            out.append(token[0])
            continue
        name = m.group(1).strip()
        if not _NAME_RE.match(name):
            raise ConfigError(f"command: unknown placeholder {token} (write {{name}} for a param, "
                              f"{{{{ and }}}} for literal braces)")
        if known is not None and name.split(".")[0] not in known:
            raise ConfigError(f"command: placeholder {{{name}}} has no --param (params: "
                              f"{', '.join(sorted(known)) or 'none'}; write {{{{ and }}}} for literal braces)")
        out.append(_Slot(name, "{" + name + "}"))
    colons(arg[pos:])
    return out


def _refusal(slot: _Slot, form: tuple[str, str], where: str | None = None) -> ConfigError:
    kind, what = form
    if kind == "refuse":
        return ConfigError(f"command: placeholder {slot.text} cannot be filled safely there ({what}); give the "
                           f"command as separate arguments, or as sh -c 'SCRIPT' with the placeholder outside quotes")
    return ConfigError(f"command: placeholder {slot.text} is {where} in the script of `{what} -c`, where a value "
                       f"cannot be quoted safely; put it outside quotes and substitutions (mongotune quotes it "
                       f"there) or pass it as an argument: {what} -c '... \"$1\" ...' {what} {slot.text}")


def _fill(arg: str, form: tuple[str, str] | None, known: set[str] | None, lookup,
          whole_colon_strict: bool = True) -> str:
    """One argument with its placeholders replaced by ``lookup(name)``: as they are, or quoted for the shell
    that reads this argument (``form``, from ``_shell.forms``).  A placeholder where no value can be quoted
    safely raises ConfigError, at launch and on a worker alike."""
    pieces = _pieces(arg, known, whole_colon_strict)
    slots = [p for p in pieces if isinstance(p, _Slot)]
    if not slots or form is None:
        return "".join(lookup(p.name) if isinstance(p, _Slot) else p for p in pieces)
    if form[0] == "refuse":
        raise _refusal(slots[0], form)
    where = iter(_shell.contexts("".join(_shell.MARK if isinstance(p, _Slot) else p for p in pieces)))
    out = []
    for p in pieces:
        if isinstance(p, _Slot):
            context = next(where)
            if context not in _shell.QUOTABLE:
                raise _refusal(p, form, context)
            out.append(_shell.quote(lookup(p.name), context))
        else:
            out.append(p)
    return "".join(out)


def placeholders(argv: list[str], space: dict) -> set[str]:
    """Check a template against a JSON space; return the names it uses.  Raises ConfigError."""
    known = set(space)
    used: set[str] = set()

    def record(name: str) -> str:
        used.add(name)
        return ""

    forms = _shell.forms(argv)
    for i, arg in enumerate(argv):
        _fill(arg, forms.get(i), known, record)
    return used


def render(argv: list[str], params: dict, space_names: set[str] | None = None) -> list[str]:
    """The argv of one trial: placeholders filled from ``params``, quoted where a shell reads them
    (see ``_shell``).  Raises ConfigError for a placeholder no value may fill safely."""
    known = set(space_names) if space_names is not None else set(params)
    forms = _shell.forms(argv)

    def lookup(name: str) -> str:
        try:
            return format_value(_lookup(params, name))
        except KeyError:
            raise TrialFailure("config", f"placeholder {name} has no value in this trial's params "
                                         f"({', '.join(sorted(params))})") from None

    return [_fill(arg, forms.get(i), known, lookup, whole_colon_strict=False) for i, arg in enumerate(argv)]


def check_relative_paths(argv: list[str], workdir: str | None, cwd: str | Path | None = None) -> None:
    """At launch: refuse a relative path to a local file when trials would run in their own directories."""
    if workdir is not None:
        return
    base = Path(cwd or os.getcwd())
    for i, arg in enumerate(argv):
        if not arg or arg.startswith("-") or os.path.isabs(arg) or "{" in arg:
            continue
        if i == 0 and "/" not in arg:
            continue  # found on PATH
        if (base / arg).is_file():
            raise ConfigError(f"command: {arg} is a relative path, but each trial runs in its own directory: "
                              "pass --workdir . (or give an absolute path)")
