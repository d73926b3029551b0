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
    ranges (``lr:1e-4:1e-1:log``, ``layers:1:6:int``, ``drop:0:0.5:q=0.05``),
    lists (``opt:adam,sgd``) and constants (``epochs:20``): see ``command_params``.

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
    ``PYTHONUNBUFFERED=1`` (so Python scripts' prints arrive as they happen),
    ``MONGOTUNE_CHECKPOINT_DIR`` (a directory kept in the study's artifact
    store: restored before the command starts, uploaded every
    ``checkpoint_every`` seconds when it changed and at exit) and
    ``MONGOTUNE_RESUMED`` (``1`` when it was restored: see ``command_checkpoint``).
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

import json
import math
import os
import queue
import signal
import subprocess
import threading
import time
import uuid
from collections import deque
from typing import Any

from ..errors import ConfigError, TrialFailure, TrialPruned
from .command_checkpoint import CheckpointDir
from .command_metrics import AGGREGATIONS, MetricParser, Readings, Reporter, aggregate  # noqa: F401
from .command_output import QUEUE_BATCHES, TAIL_CHARS, pump
from .command_output import tail as tail_of
from .command_params import parse_param, parse_params  # noqa: F401
from .command_process import die_with_parent, start, terminate_tree  # noqa: F401
from .command_settings import (DEFAULT_KILL_GRACE_S, GOALS, KIND, CommandSettings, make_settings,  # noqa: F401
                               parse_duration)
from .command_template import format_value, placeholders, render, split_command  # noqa: F401

# the names above are this module's API as the rest of mongotune and the tests import it; the pieces live in
# command_settings (settings, launch checks), command_params (--param), command_template (placeholders),
# command_metrics (metric lines, aggregation, coalescing), command_output (pipes, logs) and command_process
# (process trees, the guard)


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


class _Run:
    """One child of a trial, read until it ends or has to stop (see ``run_command``)."""

    def __init__(self, settings: CommandSettings, ctx, proc: subprocess.Popen, token: str, logs: tuple[str, str],
                 poll_s: float, extra_metrics: tuple[str, ...] = ()):
        self.settings, self.ctx, self.proc, self.token, self.poll_s = settings, ctx, proc, token, poll_s
        self.lines: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES)
        self.pumps = [threading.Thread(target=pump, args=(stream, path, name, self.lines), daemon=True,
                                       name=f"cmd-{name}-{ctx.tid}")
                      for stream, path, name in ((proc.stdout, logs[0], "stdout"), (proc.stderr, logs[1], "stderr"))]
        for t in self.pumps:
            t.start()
        self.parser = MetricParser(settings.metric)
        self.readings = Readings()
        self.extra = {name: (MetricParser(name), Readings()) for name in extra_metrics if name != settings.metric}
        self.reporter = Reporter(ctx)
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
            if source == "stdout":
                self.take_extra(line)
            reading = self.parser.parse(line) if source == "stdout" else None
            if reading is None:
                continue
            if not math.isfinite(reading[1]):
                return "nan", reading
            self.readings.add(*reading)
            if self.reporter.offer(*reading):
                return "pruned", reading
        return None

    def take_extra(self, line: str) -> None:
        """The study's other metrics (its other objectives, its constraints'): their readings, kept as they come."""
        for parser, readings in self.extra.values():
            reading = parser.parse(line)
            if reading is not None:
                readings.add(*reading)

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


def run_command(settings: CommandSettings, params: dict, ctx, *, poll_s: float = 0.05,
                extra_metrics: tuple[str, ...] = ()) -> dict:
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
    ckdir = CheckpointDir(ctx, trial_dir, settings.checkpoint_every, lambda: run.readings.last[0] if run.readings.count
                          else 0)
    proc, guard = start(argv, cwd, {**child_env(settings, params, ctx, token), **ckdir.restore()}, token)
    run = _Run(settings, ctx, proc, token, logs, poll_s, extra_metrics)
    ckdir.start()
    try:
        stop = run.read()
        if stop is None or stop[0] != "pruned":
            run.reporter.flush()  # the last reading always reaches the curve (a prune answer now comes too late)
    finally:
        terminate_tree(proc, token, settings.kill_grace_s)  # the child if it runs, and whatever it left
        ckdir.finish()
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
        raise TrialPruned(reading[0], reading[1], result=_result(settings, run, elapsed, None))
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
    return _result(settings, run, elapsed, returncode)


def _result(settings: CommandSettings, run: _Run, elapsed: float, returncode: int | None) -> dict:
    """The trial's result from its readings: the metric aggregated as asked, and the loss to minimise; the
    study's other metrics, each its last reading (``metrics.score`` fails a trial that lacks one)."""
    readings = run.readings
    metric = readings.value(settings.aggregate)
    result = {
        "status": "ok",
        "loss": -metric if settings.goal == "max" else metric,
        settings.metric: metric,
        "readings": readings.count,
        "last_step": readings.last[0],
        "duration_s": round(elapsed, 3),
    }
    for name, (_, extra) in run.extra.items():
        if extra.count:
            result[name] = extra.value("last")
    if returncode is not None:
        result["exit_code"] = returncode
    return result


def _stderr_note(err_log: str) -> str:
    tail = tail_of(err_log)
    return f"; last lines of stderr:\n{tail}" if tail else "; stderr was empty"


def run(study, params: dict, ctx) -> dict:
    """The ``command`` objective kind: one trial of a command study."""
    try:
        settings = CommandSettings.from_study(study)
    except ConfigError as exc:
        raise TrialFailure("config", str(exc)) from None
    from .metrics import reported_metrics

    return run_command(settings, params, ctx, extra_metrics=tuple(reported_metrics(study)))
