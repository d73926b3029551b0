"""A command study's settings, as stored in its study document and checked at launch (see ``command``)."""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .command_metrics import AGGREGATIONS
from .command_params import parse_params
from .command_template import check_relative_paths, placeholders, split_command

KIND = "command"
GOALS = ("max", "min")
DEFAULT_KILL_GRACE_S = 10.0


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
    checkpoint_every: float = 30.0  # seconds between uploads of $MONGOTUNE_CHECKPOINT_DIR (when it changed)
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
        if not (isinstance(self.checkpoint_every, (int, float)) and self.checkpoint_every >= 1):
            raise ConfigError(f"checkpoint interval: {self.checkpoint_every!r} is not a number of seconds >= 1")
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


def make_settings(command: str | list[str], *, metric: str, params: list[str] | tuple[str, ...] = (),
                  space: dict | None = None, goal: str = "max", aggregate: str = "last",
                  timeout: str | float | None = None, workdir: str | None = None,
                  kill_grace_s: float = DEFAULT_KILL_GRACE_S, cwd: str | Path | None = None,
                  check_paths: bool = True, checkpoint_every: float | None = None) -> tuple[CommandSettings, dict]:
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
                               timeout_s=parse_duration(timeout), workdir=workdir, kill_grace_s=kill_grace_s,
                               **({} if checkpoint_every is None else {"checkpoint_every": checkpoint_every}))
    placeholders(settings.command, full_space)
    if check_paths:
        check_relative_paths(settings.command, settings.workdir, cwd)
    return settings, full_space
