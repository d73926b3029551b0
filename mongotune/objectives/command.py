"""Command studies: tune any training command, not only the built-in Keras models.

A command study stores a command template, a metric name and a goal.  For each
trial a worker fills the template's placeholders with the trial's params, runs
the command as a child process (no shell), reads the metric from the lines the
child prints, hands every reading to the pruner, and reports the aggregated
metric as the trial's result.

Template
    A string (split like a POSIX shell would, with ``shlex``) or an argv list.
    ``{name}`` and Spell's ``:name:`` are placeholders for a param; ``{a.b}``
    reaches into a nested param.  Write ``{{`` and ``}}`` for literal braces.
    Every ``{name}`` must name a param.  A ``:name:`` is a placeholder when it
    names a param, or when it is a whole argument (then it must name one);
    elsewhere (``sh -c 'echo a:b:c'``) an unknown ``:name:`` stays as written.

Values
    Each argument is passed to the child as one argv element, so a value can
    never start a new command (``a; rm -rf ~`` is just an odd string).  A
    template that needs a shell says so itself, in any form that hands a
    script to a POSIX shell (``sh -c '...'``, ``bash -o pipefail -c '...'``,
    ``env sh -c``, ``timeout 60 bash -c``, ...): in that script a value is
    quoted for where its placeholder stands (outside quotes, inside '...' or
    inside "..."); a placeholder inside ``$(...)``, backquotes, ``${...}``,
    arithmetic, a comment or a here-document is refused at launch, as is one
    in a string that ``env -S``, ``flock -c``, ``su -c``, ``watch`` or ``ssh``
    hands to a shell (``_shell``).  Floats are written in Python's shortest
    round-trip form (``0.001``), ints as ints, strings as they are, anything
    else (bools, lists, dicts from a JSON space) as JSON.

``--param`` grammar (``NAME:SPEC``)
    ``lr:1e-4:1e-1``            uniform on [1e-4, 1e-1]
    ``lr:1e-4:1e-1:log``        log-uniform
    ``layers:1:6:int``          integers 1..6 (quniform, q=1, as ints)
    ``drop:0:0.5:q=0.05``       quantised: multiples of 0.05
    ``lr:1e-4:1e-1:log:q=1e-4`` quantised log-uniform (``log:int`` works too)
    ``opt:adam,sgd,rmsprop``    categorical (numbers are read as numbers)
    ``epochs:20``               a constant (still filled in and passed on)

Metric lines (stdout; stderr is logged and shown, not parsed)
    ``val_accuracy=0.91``, ``val_accuracy: 0.91`` (Keras progress lines such as
    ``... - val_accuracy: 0.9123 - val_loss: ...``), or a JSON object per line
    (``{"val_accuracy": 0.9, "step": 3}``; ``step`` or ``epoch`` gives the
    step, otherwise readings are numbered 1, 2, 3 ...).  A name only matches
    whole: ``accuracy`` does not match ``val_accuracy``.  Output is read with
    bounded memory (a line is parsed up to 64 KiB), and readings reach the
    worker (the curve, the pruner) coalesced: a burst of 5, then at most 4 a
    second, the latest reading kept for its turn and the last always sent.

Environment of the child
    ``CUDA_VISIBLE_DEVICES`` (the worker's GPU), ``MONGOTUNE_TRIAL_ID``,
    ``MONGOTUNE_STUDY``, ``MONGOTUNE_ATTEMPT``, ``MONGOTUNE_PARAMS`` (JSON),
    ``MONGOTUNE_TRIAL_DIR`` (the attempt's artifact directory, also the
    working directory unless the study has a ``workdir``) and
    ``PYTHONUNBUFFERED=1`` (so Python scripts' prints arrive as they happen).
    Every ``MONGOTUNE_MONGO*`` variable of the worker (the database's URL, its
    password, the files holding them) is removed.

Stopping
    A pruned, cancelled or timed-out child and everything it started (its
    process group, its descendants, and any process that still carries the
    trial's private ``MONGOTUNE_RUN_TOKEN`` in its environment, even one that
    left the group) gets SIGTERM, then SIGKILL after ``kill_grace_s``.  The
    same sweep runs after a command exits by itself, so nothing it left
    running in the background survives the trial.  Should the worker itself
    die (SIGKILL, the OOM killer), the child gets SIGKILL from the kernel
    (``PR_SET_PDEATHSIG``) and a small guard process, which sees the worker's
    pipe close, SIGKILLs the child's process group and every carrier of the
    run token.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import math
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, TrialFailure, TrialPruned
from . import _shell

KIND = "command"
GOALS = ("max", "min")
AGGREGATIONS = ("last", "max", "min", "mean")
DEFAULT_KILL_GRACE_S = 10.0
TAIL_LINES = 20
TAIL_CHARS = 2000
READ_CHUNK = 64 * 1024
MAX_LINE = 64 * 1024  # a longer line is parsed up to here (the log keeps all of it)
QUEUE_BATCHES = 64  # output read but not yet parsed: at most this many reads (a few MB)
REPORT_BURST = 5  # readings handed to the worker at once ...
REPORT_RATE = 4.0  # ... then at most this many a second (the latest waits its turn; the last always goes)

log = logging.getLogger("mongotune.command")

_NAME = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_NAME_RE = re.compile(rf"^{_NAME}$")
_BRACE_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_COLON_RE = re.compile(rf":({_NAME}):")
_NUMBER = r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf(?:inity)?)"


# ---------------------------------------------------------------- settings


@dataclass
class CommandSettings:
    """A command study's own settings, stored in the study document as plain JSON."""

    command: list[str]
    metric: str
    goal: str = "max"
    aggregate: str = "last"
    timeout_s: float | None = None
    workdir: str | None = None
    kill_grace_s: float = DEFAULT_KILL_GRACE_S
    kind: str = field(default=KIND)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if isinstance(self.command, str):
            self.command = split_command(self.command)
        if not isinstance(self.command, list) or not self.command or not all(isinstance(a, str) for a in self.command):
            raise ConfigError("command: give a non-empty command (a string or a list of arguments)")
        if not isinstance(self.metric, str) or not self.metric.strip() or any(c.isspace() for c in self.metric):
            raise ConfigError(f"metric: {self.metric!r} is not a metric name (e.g. val_accuracy)")
        if self.goal not in GOALS:
            raise ConfigError(f"goal: {self.goal!r} is not one of {', '.join(GOALS)}")
        if self.aggregate not in AGGREGATIONS:
            raise ConfigError(f"metric aggregation: {self.aggregate!r} is not one of {', '.join(AGGREGATIONS)}")
        if self.timeout_s is not None and not (isinstance(self.timeout_s, (int, float)) and self.timeout_s > 0):
            raise ConfigError(f"timeout: {self.timeout_s!r} is not a positive number of seconds")
        if not (isinstance(self.kill_grace_s, (int, float)) and self.kill_grace_s >= 0):
            raise ConfigError(f"kill grace: {self.kill_grace_s!r} is not a number of seconds >= 0")
        if self.workdir is not None and not isinstance(self.workdir, str):
            raise ConfigError(f"workdir: {self.workdir!r} is not a path")
        if self.kind != KIND:
            raise ConfigError(f"objective kind {self.kind!r} is not {KIND!r}")

    def to_doc(self) -> dict:
        return asdict(self)

    def objective_doc(self) -> dict:
        """The study's ``objective`` setting; the metric and goal go in the study's own ``metric``."""
        return {k: v for k, v in asdict(self).items() if k not in ("metric", "goal")}

    def metric_doc(self) -> dict:
        return {"name": self.metric, "goal": self.goal}

    @classmethod
    def from_doc(cls, doc: dict) -> "CommandSettings":
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        missing = [k for k in ("command", "metric") if k not in known]
        if missing:
            raise ConfigError(f"command study settings lack {', '.join(missing)}")
        return cls(**known)

    @classmethod
    def from_study(cls, study) -> "CommandSettings":
        """From a study document: its ``objective`` plus the name and goal of its ``metric``."""
        metric = getattr(study, "metric", None) or {}
        return cls.from_doc({**study.objective, "metric": metric.get("name"), "goal": metric.get("goal", "max")})


def split_command(template: str) -> list[str]:
    """Split a command string into argv the way a POSIX shell would (quotes respected, nothing expanded)."""
    try:
        argv = shlex.split(template)
    except ValueError as exc:
        raise ConfigError(f"command: cannot split {template!r}: {exc}") from None
    if not argv:
        raise ConfigError("command: the command is empty")
    return argv


def parse_duration(text: str | float | int | None) -> float | None:
    """``90``, ``90s``, ``15m``, ``2h``, ``1h30m``, ``1d`` -> seconds (None stays None)."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        s = text.strip().lower()
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", s)
        if not s or not parts or not any(parts.groups()):
            raise ConfigError(f"timeout: {text!r} is not a duration (e.g. 90, 90s, 15m, 2h, 1h30m)")
        d, h, m, sec = (float(g) if g else 0.0 for g in parts.groups())
        seconds = d * 86400 + h * 3600 + m * 60 + sec
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"timeout: {text!r} must be longer than 0 seconds")
    return seconds


# ------------------------------------------------------------ --param grammar


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


# ------------------------------------------------------------- placeholders


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


def make_settings(command: str | list[str], *, metric: str, params: list[str] | tuple[str, ...] = (),
                  space: dict | None = None, goal: str = "max", aggregate: str = "last",
                  timeout: str | float | None = None, workdir: str | None = None,
                  kill_grace_s: float = DEFAULT_KILL_GRACE_S, cwd: str | Path | None = None,
                  check_paths: bool = True) -> tuple[CommandSettings, dict]:
    """Validate a command study as ``launch`` receives it; return its settings and its JSON space.

    ``space`` is a ``--space`` file's JSON (already read); ``params`` are
    ``--param`` specs added to it.  ``workdir`` is made absolute (relative to
    ``cwd``) and must exist here.  Every problem raises ConfigError with one line.
    """
    argv = split_command(command) if isinstance(command, str) else list(command)
    full_space = parse_params(params, space)
    if not full_space:
        raise ConfigError("a command study needs a search space: give --param NAME:SPEC (or --space FILE)")
    from ..search.spaces import check

    check(full_space)  # without hyperopt: the launch builds it when it checks its search against it
    if workdir is not None:
        wd = Path(workdir).expanduser()
        if not wd.is_absolute():
            wd = Path(cwd or os.getcwd()) / wd
        if not wd.is_dir():
            raise ConfigError(f"workdir: {workdir} is not a directory")
        workdir = str(wd.resolve())
    settings = CommandSettings(command=argv, metric=metric, goal=goal, aggregate=aggregate,
                               timeout_s=parse_duration(timeout), workdir=workdir, kill_grace_s=kill_grace_s)
    placeholders(settings.command, full_space)
    if check_paths:
        check_relative_paths(settings.command, settings.workdir, cwd)
    return settings, full_space


# ----------------------------------------------------------- metric parsing


class MetricParser:
    """Finds readings of one metric in output lines; numbers them into steps."""

    def __init__(self, metric: str):
        self.metric = metric
        name = re.escape(metric)
        self._text = re.compile(rf"(?<![\w.]){name}\s*[=:]\s*({_NUMBER})(?![\w.])", re.IGNORECASE)
        self._last_step: int | None = None

    def parse(self, line: str) -> tuple[int, float] | None:
        """``(step, value)`` if the line carries a reading, else None."""
        value: float | None = None
        step: Any = None
        s = line.strip()
        if s.startswith("{") and s.endswith("}"):
            try:
                obj = json.loads(s)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                raw = obj.get(self.metric)
                if isinstance(raw, (int, float)) and not isinstance(raw, bool):
                    value = float(raw)
                    step = obj.get("step", obj.get("epoch"))
                else:
                    return None
        if value is None:
            found = self._text.findall(line)
            if not found:
                return None
            value = float(found[-1])
        if isinstance(step, (int, float)) and not isinstance(step, bool) and math.isfinite(step):
            step = int(step)
        else:
            step = 1 if self._last_step is None else self._last_step + 1
        self._last_step = step
        return step, value


def aggregate(values: list[float], how: str) -> float:
    if how == "last":
        return values[-1]
    if how == "max":
        return max(values)
    if how == "min":
        return min(values)
    if how == "mean":
        return sum(values) / len(values)
    raise ConfigError(f"metric aggregation: {how!r} is not one of {', '.join(AGGREGATIONS)}")


# ------------------------------------------------------------ process trees


def _run_token_of(proc) -> str | None:
    try:
        return proc.environ().get("MONGOTUNE_RUN_TOKEN")
    except Exception:  # noqa: BLE001 - gone, zombie or not ours: not part of the tree
        return None


def _tree(pid: int | None, token: str | None):
    """The processes of one trial: ``pid`` (a running child) with its descendants, and carriers of its run token."""
    import psutil

    found = {}
    if pid is not None:
        try:
            root = psutil.Process(pid)
            found[root.pid] = root
            for p in root.children(recursive=True):
                found[p.pid] = p
        except psutil.Error:
            pass
    if token:
        me = os.getuid()
        for p in psutil.process_iter(["uids"]):
            try:
                if p.pid in found or p.info["uids"] is None or p.info["uids"].real != me:
                    continue
            except (KeyError, AttributeError):
                continue
            if _run_token_of(p) == token:
                found[p.pid] = p
    return list(found.values())


def _live(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_gone(procs, timeout: float) -> list:
    """Wait until none of ``procs`` is alive (zombies count as gone); return those still alive."""
    end = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if _live(p)]
        if not alive or time.monotonic() >= end:
            return alive
        time.sleep(0.05)


def _signal_all(proc: subprocess.Popen, others, sig: int) -> None:
    import psutil

    try:
        os.killpg(proc.pid, sig)  # the child leads its own session and process group
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
    for p in others:
        try:
            p.send_signal(sig)
        except psutil.Error:
            pass


def terminate_tree(proc: subprocess.Popen, token: str | None, grace_s: float) -> None:
    """SIGTERM the child's whole tree, SIGKILL whatever is left after ``grace_s``; reap the child.

    The tree is the child's process group, its descendants, and every process
    of this user whose environment carries the trial's run token (found again
    after the TERM, since a dying parent hands its children to init).
    """
    def tree():  # a reaped child's pid may belong to someone else by now: only a running one is searched
        return [p for p in _tree(proc.pid if proc.poll() is None else None, token) if p.pid != proc.pid]

    others = tree()
    _signal_all(proc, others, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    end = time.monotonic() + grace_s
    alive = _wait_gone(others, max(0.0, end - time.monotonic()))
    again = [p for p in tree() if _live(p)]
    left = {p.pid: p for p in alive + again}
    if proc.poll() is None or left:
        _signal_all(proc, list(left.values()), signal.SIGKILL)
        _wait_gone(list(left.values()), 5.0)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent
        proc.kill()
        proc.wait()


# ------------------------------------------------------------ a watchdog the trial cannot outlive

_PR_SET_PDEATHSIG = 1


@functools.cache
def _prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(sig: int = signal.SIGKILL):
    """A ``preexec_fn``: the kernel sends ``sig`` to the child when the thread that started it ends,
    however its process ends (SIGKILL and the OOM killer included).  None where there is no ``prctl``.

    The thread that starts the child must live as long as the child does (``run_command`` waits for it).
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def arm() -> None:  # in the child, between fork and exec
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent was gone before the call above
            os.kill(os.getpid(), sig)

    return arm


# Run as `python -I -S -c _GUARD_CODE`; reads "TOKEN\n", then "PGID\n", then "done\n" on its stdin. If the pipe
# closes before "done" (the worker died), it SIGKILLs the process group and every process of this user whose
# environment carries MONGOTUNE_RUN_TOKEN=TOKEN, until none has been seen three times in a row.
_GUARD_CODE = r"""
import os, signal, sys, time
data = b""
while True:
    try:
        chunk = os.read(0, 4096)
    except InterruptedError:
        continue
    if not chunk:
        break
    data += chunk
words = data.decode("ascii", "replace").split()
if not words or words[-1] == "done":
    sys.exit(0)
mark = b"MONGOTUNE_RUN_TOKEN=" + words[0].encode()
pgid = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
me, uid = os.getpid(), os.getuid()

def sweep():
    if pgid:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
    hit = 0
    try:
        names = os.listdir("/proc")
    except OSError:
        names = []
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            if os.stat("/proc/" + name).st_uid != uid:
                continue
            with open("/proc/" + name + "/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:
            continue
        if mark in env:
            try:
                os.kill(int(name), signal.SIGKILL)
                hit += 1
            except OSError:
                pass
    return hit

end, quiet = time.monotonic() + 10, 0
while quiet < 3 and time.monotonic() < end:
    quiet = 0 if sweep() else quiet + 1
    time.sleep(0.1)
"""


class _Guard:
    """A small process, in its own session, that ends the trial's processes if this process dies first.

    The child itself dies with the worker (``die_with_parent``); the guard takes the rest: whatever the child
    started, in its process group or out of it (anything that carries the trial's run token).  A trial that
    ends normally tells the guard so (``release``) after ``terminate_tree``.
    """

    def __init__(self, token: str):
        env = {k: os.environ[k] for k in ("PATH", "LD_LIBRARY_PATH") if k in os.environ}
        try:
            self.proc: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _GUARD_CODE], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True, env=env)
        except OSError as exc:
            log.warning("no watchdog for this trial's processes (%s): should this worker be killed, what the "
                        "command started may outlive it", exc)
            self.proc = None
        self._send(f"{token}\n")

    def _send(self, text: str) -> None:
        if self.proc is None or self.proc.stdin is None or self.proc.stdin.closed:
            return
        try:
            self.proc.stdin.write(text.encode())
            self.proc.stdin.flush()
        except OSError:  # the guard is gone: the child still dies with this process
            pass

    def watch(self, pgid: int) -> None:
        self._send(f"{pgid}\n")

    def release(self) -> None:
        """The trial's processes are gone: the guard leaves without doing anything."""
        if self.proc is None:
            return
        self._send("done\n")
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - it exits as soon as it reads "done"
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------ the run


def _tail(path: str, lines: int = TAIL_LINES, chars: int = TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    text = "\n".join(data.replace("\r", "\n").rstrip().splitlines()[-lines:])
    return text[-chars:]


_LINE_END = re.compile(rb"\r\n|\r|\n")


def _pump(stream, log_path: str, name: str, out: queue.Queue) -> None:
    """Copy one pipe to its log file; hand its lines (split on \\n and \\r) to ``out``, a batch per read.

    Memory stays bounded: ``out`` holds at most QUEUE_BATCHES batches (while it is full this thread waits,
    and so, once the pipe is full, does the child), and a line is handed over up to MAX_LINE bytes (the log
    keeps all of it).
    """
    with open(log_path, "ab", buffering=0) as log_file:
        pending, skipping = b"", False  # skipping: the rest of an over-long line, for the log only
        while True:
            chunk = stream.read1(READ_CHUNK) if hasattr(stream, "read1") else stream.read(READ_CHUNK)
            if not chunk:
                break
            log_file.write(chunk)
            *whole, pending = _LINE_END.split(pending + chunk)
            batch = []
            for raw in whole:
                if not skipping:
                    batch.append(raw[:MAX_LINE].decode("utf-8", errors="replace"))
                skipping = False
            if len(pending) > MAX_LINE:
                if not skipping:
                    batch.append(pending[:MAX_LINE].decode("utf-8", errors="replace"))
                pending, skipping = b"", True
            if batch:
                out.put((name, batch))
        if pending and not skipping:
            out.put((name, [pending.decode("utf-8", errors="replace")]))
    out.put((name, None))


def child_env(settings: CommandSettings, params: dict, ctx, token: str, base: dict | None = None) -> dict:
    """The child's environment: the worker's, less every ``MONGOTUNE_MONGO*`` variable (the database's URL,
    password and their files), plus the trial's variables (see the module docstring)."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.startswith("MONGOTUNE_MONGO") and k != "MONGOTUNE_LIFELINE_FD"}
    gpu = getattr(ctx, "gpu", None)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update({
        "MONGOTUNE_TRIAL_ID": str(ctx.tid),
        "MONGOTUNE_STUDY": str(getattr(ctx, "study", "") or ""),
        "MONGOTUNE_ATTEMPT": str(getattr(ctx, "attempt", 1)),
        "MONGOTUNE_PARAMS": json.dumps(params, default=format_value, sort_keys=True),
        "MONGOTUNE_TRIAL_DIR": str(ctx.artifacts_dir),
        "MONGOTUNE_METRIC": settings.metric,
        "MONGOTUNE_RUN_TOKEN": token,
    })
    return env


class _Readings:
    """A run's readings of its metric, aggregated as they come: constant memory, however many there are."""

    def __init__(self):
        self.count, self.total, self.low, self.high = 0, 0.0, math.inf, -math.inf
        self.last: tuple[int, float] | None = None

    def add(self, step: int, value: float) -> None:
        self.count += 1
        self.total += value
        self.low, self.high = min(self.low, value), max(self.high, value)
        self.last = (step, value)

    def value(self, how: str) -> float:
        if how not in AGGREGATIONS:
            raise ConfigError(f"metric aggregation: {how!r} is not one of {', '.join(AGGREGATIONS)}")
        return {"last": self.last[1] if self.last else math.nan, "max": self.high, "min": self.low,
                "mean": self.total / self.count if self.count else math.nan}[how]


class _Reporter:
    """Hands readings to ``ctx.report_step`` (a database write and a pruning question each), coalesced.

    A burst of REPORT_BURST goes at once, then at most REPORT_RATE a second: a reading that comes sooner
    waits, replaced by any later one, and goes when its turn comes (``flush``; the last one always goes at
    the end).  A reading at a step where the pruner must see the value (``ctx.extra["must_report"]``:
    ASHA's rungs) goes at once.
    """

    def __init__(self, ctx, rate: float = REPORT_RATE, burst: int = REPORT_BURST):
        self.ctx, self.rate, self.burst = ctx, rate, burst
        self.tokens, self.at = float(burst), time.monotonic()
        self.waiting: tuple[int, float] | None = None
        self.sent: tuple[int, float] | None = None
        self.must = (getattr(ctx, "extra", None) or {}).get("must_report")

    def offer(self, step: int, value: float) -> bool:
        """Take a reading; True: the pruner stops the trial (at this reading)."""
        self.waiting = (step, value)
        if self.must is not None and self.must(step):
            return self.flush()
        return self.flush(due_only=True)

    def flush(self, due_only: bool = False) -> bool:
        """Send the waiting reading (``due_only``: if its turn has come); True: the pruner says stop."""
        if self.waiting is None:
            return False
        now = time.monotonic()
        self.tokens, self.at = min(float(self.burst), self.tokens + (now - self.at) * self.rate), now
        if due_only and self.tokens < 1.0:
            return False
        self.sent, self.waiting = self.waiting, None
        self.tokens -= 1.0
        return bool(self.ctx.report_step(*self.sent))


class _Run:
    """One child of a trial, read until it ends or has to stop (see ``run_command``)."""

    def __init__(self, settings: CommandSettings, ctx, proc: subprocess.Popen, token: str, logs: tuple[str, str],
                 poll_s: float):
        self.settings, self.ctx, self.proc, self.token, self.poll_s = settings, ctx, proc, token, poll_s
        self.lines: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES)
        self.pumps = [threading.Thread(target=_pump, args=(stream, path, name, self.lines), daemon=True,
                                       name=f"cmd-{name}-{ctx.tid}")
                      for stream, path, name in ((proc.stdout, logs[0], "stdout"), (proc.stderr, logs[1], "stderr"))]
        for t in self.pumps:
            t.start()
        self.parser = MetricParser(settings.metric)
        self.readings = _Readings()
        self.reporter = _Reporter(ctx)
        self.last_stdout: deque[str] = deque(maxlen=5)
        self.latest: str | None = None
        self.shown: tuple[float, str | None] = (0.0, None)  # when the last output line went to set_progress
        self.started = time.monotonic()
        self.deadline = self.started + settings.timeout_s if settings.timeout_s else None
        self.exited_at: float | None = None
        self.swept = False

    def read(self) -> tuple[str, Any] | None:
        """Read the child's output until both pipes close; return why it had to stop early, if it did:
        ``("pruned" | "nan", (step, value))``, ``("timeout" | "interrupted", None)``."""
        open_streams = 2
        while open_streams:
            try:
                source, batch = self.lines.get(timeout=self.poll_s)
            except queue.Empty:
                source = batch = None
            if source is not None and batch is None:
                open_streams -= 1
            elif batch:
                stop = self.take(source, batch)
                if stop is not None:
                    return stop
            if self.reporter.flush(due_only=True):
                return "pruned", self.reporter.sent
            self.show()
            stop = self.check()
            if stop is not None:
                return stop
            if self.abandoned():
                break
        return None

    def take(self, source: str, batch: list[str]) -> tuple[str, Any] | None:
        for line in batch:
            if line.strip():
                self.latest = line
                if source == "stdout":
                    self.last_stdout.append(line)
            reading = self.parser.parse(line) if source == "stdout" else None
            if reading is None:
                continue
            if not math.isfinite(reading[1]):
                return "nan", reading
            self.readings.add(*reading)
            if self.reporter.offer(*reading):
                return "pruned", reading
        return None

    def check(self) -> tuple[str, None] | None:
        if self.ctx.should_stop():
            return "interrupted", None
        if self.deadline is not None and time.monotonic() > self.deadline:
            return "timeout", None
        return None

    def abandoned(self) -> bool:
        """The command is done but something it started holds its pipes open: end that, and after a while
        stop reading a pipe that a process which hid from the sweep still holds."""
        if self.proc.poll() is None:
            return False
        now = time.monotonic()
        if self.exited_at is None:
            self.exited_at = now
        elif not self.swept and now - self.exited_at > 2.0:
            terminate_tree(self.proc, self.token, self.settings.kill_grace_s)
            self.swept = True
        elif self.swept and now - self.exited_at > 2.0 + self.settings.kill_grace_s + 10.0:
            return True
        return False

    def show(self, force: bool = False) -> None:
        if self.latest is not None and self.latest != self.shown[1] and hasattr(self.ctx, "set_progress"):
            now = time.monotonic()
            if force or now - self.shown[0] >= 0.25:
                self.ctx.set_progress({"last_output": self.latest[-300:]})
                self.shown = (now, self.latest)

    def drain(self, timeout: float = 10.0) -> None:
        """Let the pipe readers finish (they may wait on a full queue nobody reads any more)."""
        end = time.monotonic() + timeout
        while any(t.is_alive() for t in self.pumps) and time.monotonic() < end:
            try:
                self.lines.get(timeout=0.05)
            except queue.Empty:
                pass


def _start(argv: list[str], cwd: str, env: dict, token: str) -> tuple[subprocess.Popen, _Guard]:
    """The child in its own session, dying with this thread, and its guard."""
    guard = _Guard(token)
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
                                preexec_fn=die_with_parent())
    except OSError as exc:
        guard.release()
        raise TrialFailure("exec", f"cannot run {argv[0]!r}: {exc.strerror or exc}") from None
    except subprocess.SubprocessError as exc:  # the preexec_fn failed in the child
        guard.release()
        raise TrialFailure("exec", f"cannot run {argv[0]!r}: {exc}") from None
    guard.watch(proc.pid)
    return proc, guard


def run_command(settings: CommandSettings, params: dict, ctx, *, poll_s: float = 0.05) -> dict:
    """Run one trial of a command study and return its result (see the module docstring).

    Raises TrialFailure (``exec``, ``exit``, ``timeout``, ``no-metric``, ``nan``,
    ``interrupted``, ``config``) or TrialPruned.
    """
    try:
        argv = render(settings.command, params)
    except ConfigError as exc:
        raise TrialFailure("config", str(exc)) from None
    trial_dir = str(ctx.artifacts_dir)
    os.makedirs(trial_dir, exist_ok=True)
    cwd = settings.workdir or trial_dir
    if not os.path.isdir(cwd):
        raise TrialFailure("config", f"workdir {cwd} does not exist on this worker")
    logs = (os.path.join(trial_dir, "stdout.log"), os.path.join(trial_dir, "stderr.log"))
    with open(os.path.join(trial_dir, "command.json"), "w") as fh:
        json.dump({"argv": argv, "cwd": cwd, "params": params}, fh, default=format_value, indent=1)
    token = uuid.uuid4().hex
    proc, guard = _start(argv, cwd, child_env(settings, params, ctx, token), token)
    run = _Run(settings, ctx, proc, token, logs, poll_s)
    try:
        stop = run.read()
        if stop is None or stop[0] != "pruned":
            run.reporter.flush()  # the last reading always reaches the curve (a prune answer now comes too late)
    finally:
        terminate_tree(proc, token, settings.kill_grace_s)  # the child if it runs, and whatever it left
        run.drain()
        run.show(force=True)
        guard.release()
    return _outcome(settings, run, stop, proc.returncode, logs[1])


def _outcome(settings: CommandSettings, run: _Run, stop: tuple[str, Any] | None, returncode: int | None,
             err_log: str) -> dict:
    """The trial's result, or the TrialFailure / TrialPruned that says how it ended."""
    elapsed = time.monotonic() - run.started
    kind, reading = stop if stop is not None else (None, None)
    if kind == "pruned":
        raise TrialPruned(reading[0], reading[1], result=_result(settings, run.readings, elapsed, None))
    if kind == "interrupted":
        raise TrialFailure("interrupted", "trial stopped: lease lost or worker shutting down; "
                                          "the command was terminated")
    if kind == "timeout":
        raise TrialFailure("timeout", f"command ran past its timeout of {settings.timeout_s:g} s and was "
                                      f"terminated{_stderr_note(err_log)}")
    if kind == "nan":
        raise TrialFailure("nan", f"{settings.metric} was {reading[1]} at step {reading[0]}; "
                                  f"the command was terminated{_stderr_note(err_log)}")
    if returncode != 0:
        if returncode < 0:
            try:
                how = f"was killed by {signal.Signals(-returncode).name}"
            except ValueError:
                how = f"was killed by signal {-returncode}"
        else:
            how = f"exited with code {returncode}"
        raise TrialFailure("exit", f"command {how}{_stderr_note(err_log)}")
    if not run.readings.count:
        shown = " | ".join(run.last_stdout) or "(none)"
        raise TrialFailure("no-metric", f"command printed no {settings.metric} reading (expected lines like "
                                        f"'{settings.metric}=0.9', '{settings.metric}: 0.9' or a JSON object); "
                                        f"last stdout lines: {shown[-TAIL_CHARS:]}{_stderr_note(err_log)}")
    return _result(settings, run.readings, elapsed, returncode)


def _result(settings: CommandSettings, readings: _Readings, elapsed: float, returncode: int | None) -> dict:
    """The trial's result from its readings: the metric aggregated as asked, and the loss to minimise."""
    metric = readings.value(settings.aggregate)
    result = {
        "status": "ok",
        "loss": -metric if settings.goal == "max" else metric,
        settings.metric: metric,
        "readings": readings.count,
        "last_step": readings.last[0],
        "duration_s": round(elapsed, 3),
    }
    if returncode is not None:
        result["exit_code"] = returncode
    return result


def _stderr_note(err_log: str) -> str:
    tail = _tail(err_log)
    return f"; last lines of stderr:\n{tail}" if tail else "; stderr was empty"


def run(study, params: dict, ctx) -> dict:
    """The ``command`` objective kind: one trial of a command study."""
    try:
        settings = CommandSettings.from_study(study)
    except ConfigError as exc:
        raise TrialFailure("config", str(exc)) from None
    return run_command(settings, params, ctx)

