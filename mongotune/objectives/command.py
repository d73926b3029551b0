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
    template that needs a shell says so itself (``sh -c '...'``): inside the
    script argument of ``sh``/``bash``/``dash``/``zsh``/``ksh -c``, values are
    shell-quoted (``shlex.quote``).  Floats are written in Python's shortest
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
    whole: ``accuracy`` does not match ``val_accuracy``.

Environment of the child
    ``CUDA_VISIBLE_DEVICES`` (the worker's GPU), ``MONGOTUNE_TRIAL_ID``,
    ``MONGOTUNE_STUDY``, ``MONGOTUNE_ATTEMPT``, ``MONGOTUNE_PARAMS`` (JSON),
    ``MONGOTUNE_TRIAL_DIR`` (the attempt's artifact directory, also the
    working directory unless the study has a ``workdir``) and
    ``PYTHONUNBUFFERED=1`` (so Python scripts' prints arrive as they happen).
    The worker's database password (``MONGOTUNE_MONGO_PASSWORD``) is removed.

Stopping
    A pruned, cancelled or timed-out child and everything it started (its
    process group, its descendants, and any process that still carries the
    trial's private ``MONGOTUNE_RUN_TOKEN`` in its environment, even one that
    left the group) gets SIGTERM, then SIGKILL after ``kill_grace_s``.  The
    same sweep runs after a command exits by itself, so nothing it left
    running in the background survives the trial.
"""

from __future__ import annotations

import json
import math
import os
import queue
import re
import shlex
import signal
import subprocess
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, TrialFailure, TrialPruned

KIND = "command"
GOALS = ("max", "min")
AGGREGATIONS = ("last", "max", "min", "mean")
DEFAULT_KILL_GRACE_S = 10.0
SHELLS = ("sh", "bash", "dash", "zsh", "ksh")
TAIL_LINES = 20
TAIL_CHARS = 2000

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


def _shell_script_index(argv: list[str]) -> int | None:
    """Index of the script argument when argv is ``sh -c SCRIPT ...`` (or bash/dash/zsh/ksh)."""
    if os.path.basename(argv[0]) not in SHELLS:
        return None
    for i, arg in enumerate(argv[1:], start=1):
        if arg.startswith("--") or not arg.startswith("-"):
            return None
        if "c" in arg[1:]:
            return i + 1 if i + 1 < len(argv) else None
    return None


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


def _fill(arg: str, known: set[str] | None, lookup, quote: bool, whole_colon_strict: bool = True) -> str:
    """Replace the placeholders of one argument.

    ``known`` set: validation mode (lookup raises for unknown names);
    ``lookup(name) -> str`` gives a value's text.
    """
    def colon(m: re.Match) -> str:
        name = m.group(1)
        if known is not None and name.split(".")[0] not in known:
            if whole_colon_strict and m.group(0) == arg:
                raise ConfigError(f"command: placeholder :{name}: has no --param (params: {', '.join(sorted(known)) or 'none'})")
            return m.group(0)
        text = lookup(name)
        return shlex.quote(text) if quote else text

    def piece(segment: str) -> str:
        return _COLON_RE.sub(colon, segment)

    out = []
    pos = 0
    for m in _BRACE_RE.finditer(arg):
        out.append(piece(arg[pos:m.start()]))
        pos = m.end()
        token = m.group(0)
        if token == "{{":
            out.append("{")
        elif token == "}}":
            out.append("}")
        else:
            name = m.group(1).strip()
            if not _NAME_RE.match(name):
                raise ConfigError(f"command: unknown placeholder {token} (write {{name}} for a param, "
                                  f"{{{{ and }}}} for literal braces)")
            if known is not None and name.split(".")[0] not in known:
                raise ConfigError(f"command: placeholder {{{name}}} has no --param (params: "
                                  f"{', '.join(sorted(known)) or 'none'}; write {{{{ and }}}} for literal braces)")
            text = lookup(name)
            out.append(shlex.quote(text) if quote else text)
    out.append(piece(arg[pos:]))
    return "".join(out)


def placeholders(argv: list[str], space: dict) -> set[str]:
    """Check a template against a JSON space; return the names it uses.  Raises ConfigError."""
    known = set(space)
    used: set[str] = set()

    def record(name: str) -> str:
        used.add(name)
        return ""

    for arg in argv:
        _fill(arg, known, record, quote=False)
    return used


def render(argv: list[str], params: dict, space_names: set[str] | None = None) -> list[str]:
    """The argv of one trial: placeholders filled from ``params`` (shell-quoted inside ``sh -c`` scripts)."""
    known = set(space_names) if space_names is not None else set(params)
    script = _shell_script_index(argv)

    def lookup(name: str) -> str:
        try:
            return format_value(_lookup(params, name))
        except KeyError:
            raise TrialFailure("config", f"placeholder {name} has no value in this trial's params "
                                         f"({', '.join(sorted(params))})") from None

    return [_fill(arg, known, lookup, quote=(i == script), whole_colon_strict=False) for i, arg in enumerate(argv)]


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
    from ..search.spaces import build

    build(full_space)  # hyperopt must accept it
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


def _pump(stream, log_path: str, name: str, out: queue.Queue) -> None:
    """Copy one pipe to its log file; put each complete line (split on \\n and \\r) on the queue."""
    with open(log_path, "ab", buffering=0) as log:
        pending = b""
        while True:
            chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
            if not chunk:
                break
            log.write(chunk)
            pending += chunk
            *lines, pending = re.split(rb"\r\n|\r|\n", pending)
            for raw in lines:
                out.put((name, raw.decode("utf-8", errors="replace")))
            if len(pending) > 1 << 20:  # a very long line without a newline: take it as it is
                out.put((name, pending.decode("utf-8", errors="replace")))
                pending = b""
        if pending:
            out.put((name, pending.decode("utf-8", errors="replace")))
    out.put((name, None))


def child_env(settings: CommandSettings, params: dict, ctx, token: str, base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    env.pop("MONGOTUNE_MONGO_PASSWORD", None)
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


def run_command(settings: CommandSettings, params: dict, ctx, *, poll_s: float = 0.05) -> dict:
    """Run one trial of a command study and return its result (see the module docstring).

    Raises TrialFailure (``exec``, ``exit``, ``timeout``, ``no-metric``, ``nan``,
    ``interrupted``, ``config``) or TrialPruned.
    """
    argv = render(settings.command, params)
    trial_dir = str(ctx.artifacts_dir)
    os.makedirs(trial_dir, exist_ok=True)
    cwd = settings.workdir or trial_dir
    if not os.path.isdir(cwd):
        raise TrialFailure("config", f"workdir {cwd} does not exist on this worker")
    out_log = os.path.join(trial_dir, "stdout.log")
    err_log = os.path.join(trial_dir, "stderr.log")
    with open(os.path.join(trial_dir, "command.json"), "w") as fh:
        json.dump({"argv": argv, "cwd": cwd, "params": params}, fh, default=format_value, indent=1)
    token = uuid.uuid4().hex
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=child_env(settings, params, ctx, token),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, close_fds=True)
    except OSError as exc:
        raise TrialFailure("exec", f"cannot run {argv[0]!r}: {exc.strerror or exc}") from None

    lines: queue.Queue = queue.Queue()
    pumps = [threading.Thread(target=_pump, args=(proc.stdout, out_log, "stdout", lines), daemon=True,
                              name=f"cmd-stdout-{ctx.tid}"),
             threading.Thread(target=_pump, args=(proc.stderr, err_log, "stderr", lines), daemon=True,
                              name=f"cmd-stderr-{ctx.tid}")]
    for t in pumps:
        t.start()

    parser = MetricParser(settings.metric)
    readings: list[tuple[int, float]] = []
    last_stdout: deque[str] = deque(maxlen=5)
    open_streams = 2
    started = time.monotonic()
    deadline = started + settings.timeout_s if settings.timeout_s else None
    exited_at: float | None = None
    swept = False
    shown: tuple[float, str | None] = (0.0, None)  # when the last output line was handed to set_progress
    latest: str | None = None
    stop: tuple[str, Any] | None = None  # why the run was cut short

    def show(force: bool = False) -> None:
        nonlocal shown
        if latest is not None and latest != shown[1] and hasattr(ctx, "set_progress"):
            now = time.monotonic()
            if force or now - shown[0] >= 0.25:
                ctx.set_progress({"last_output": latest[-300:]})
                shown = (now, latest)

    try:
        while open_streams:
            try:
                source, line = lines.get(timeout=poll_s)
            except queue.Empty:
                source = line = None
            if source is not None and line is None:
                open_streams -= 1
            elif line is not None:
                if line.strip():
                    latest = line
                    if source == "stdout":
                        last_stdout.append(line)
                reading = parser.parse(line) if source == "stdout" else None
                if reading is not None:
                    step, value = reading
                    readings.append(reading)
                    if not math.isfinite(value):
                        stop = ("nan", reading)
                        break
                    if ctx.report_step(step, value):
                        stop = ("pruned", reading)
                        break
            show()
            if ctx.should_stop():
                stop = ("interrupted", None)
                break
            now = time.monotonic()
            if deadline is not None and now > deadline:
                stop = ("timeout", None)
                break
            if proc.poll() is not None:
                if exited_at is None:
                    exited_at = now
                elif not swept and now - exited_at > 2.0:
                    # the command is done but something it started holds its pipes open: end that
                    terminate_tree(proc, token, settings.kill_grace_s)
                    swept = True
                elif swept and now - exited_at > 2.0 + settings.kill_grace_s + 10.0:
                    break  # a pipe held by a process that hid from the sweep: stop reading it
    finally:
        terminate_tree(proc, token, settings.kill_grace_s)  # the child if it runs, and whatever it left
        for t in pumps:
            t.join(timeout=10)
        show(force=True)

    returncode = proc.returncode
    elapsed = time.monotonic() - started
    if stop is not None:
        kind, reading = stop
        if kind == "pruned":
            raise TrialPruned(reading[0], reading[1], result=_result(settings, readings, elapsed, None))
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
    if not readings:
        shown = " | ".join(last_stdout) or "(none)"
        raise TrialFailure("no-metric", f"command printed no {settings.metric} reading (expected lines like "
                                        f"'{settings.metric}=0.9', '{settings.metric}: 0.9' or a JSON object); "
                                        f"last stdout lines: {shown[-TAIL_CHARS:]}{_stderr_note(err_log)}")
    return _result(settings, readings, elapsed, returncode)


def _result(settings: CommandSettings, readings: list[tuple[int, float]], elapsed: float,
            returncode: int | None) -> dict:
    """The trial's result from its readings: the metric aggregated as asked, and the loss to minimise."""
    metric = aggregate([v for _, v in readings], settings.aggregate)
    result = {
        "status": "ok",
        "loss": -metric if settings.goal == "max" else metric,
        settings.metric: metric,
        "readings": len(readings),
        "last_step": readings[-1][0],
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


def command_study(name: str, max_evals: int, command: str | list[str], *, metric: str,
                  params: list[str] | tuple[str, ...] = (), space: dict | None = None, goal: str = "max",
                  aggregate: str = "last", timeout: str | float | None = None, workdir: str | None = None,
                  cwd: str | Path | None = None, **core):
    """A validated command ``Study`` (not yet written): the command's settings, its metric, its JSON space.

    ``core`` takes the generic study settings (search, pruner, lease_s, ...).
    """
    from ..store.studies import Study

    settings, full_space = make_settings(command, metric=metric, params=params, space=space, goal=goal,
                                         aggregate=aggregate, timeout=timeout, workdir=workdir, cwd=cwd)
    return Study(name=name, max_evals=max_evals, objective=settings.objective_doc(), metric=settings.metric_doc(),
                 space=full_space, **core).validate()
