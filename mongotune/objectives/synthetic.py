"""Objectives without TensorFlow that exercise the pool itself.

``synthetic`` is for mongotune's own tests: it writes files wherever its
``record_dir`` says, so a worker runs it only where the test suite set
``MONGOTUNE_TEST_OBJECTIVES=1`` (``objectives.TEST_SWITCH``); anywhere else it
is refused.  ``sleep`` (benchmarks, smoke checks) touches no file.

A study's ``objective`` dict carries their options::

    {"kind": "synthetic", "sleep_s": 0.1, "steps": 5, "raise_on_tids": [3], "nan_on_tids": [5],
     "record_dir": "/tmp/runs", "hang_on_tids": [7]}
"""

from __future__ import annotations

import math
import os
import uuid

from ..errors import ConfigError, TrialPruned
from . import TrialContext, sleep_interruptibly
from .kinds import ObjectiveKind
from .launch import Built, LaunchOptions, no_command_options


def synthetic(study, params: dict, ctx: TrialContext) -> dict:
    """Loss ``(x - 0.3)^2`` (``x`` from the params, 0 when absent).

    With ``steps`` > 0 the trial reports a learning curve first: step ``s``
    (1-based) reads ``loss * (1 + decay / s)`` after ``sleep_s / steps``
    seconds, so curves of better ``x`` stay below worse ones at every step and
    pruners have something real to act on.  ``record_dir`` gets one file per
    evaluation that ran to its end, so tests can count how often a trial ran.
    """
    opts = study.objective
    x = float(params.get("x", 0.0))
    loss = (x - 0.3) ** 2
    steps = int(opts.get("steps", 0))
    sleep_s = float(opts.get("sleep_s", 0.0))
    if ctx.tid in opts.get("hang_on_tids", []):
        sleep_s = max(sleep_s, 3600.0)
    if steps > 0:
        decay = float(opts.get("decay", 1.0))
        for step in range(1, steps + 1):
            sleep_interruptibly(sleep_s / steps, ctx)
            value = loss * (1 + decay / step)
            if ctx.report_step(step, value):
                raise TrialPruned(step, value)
    else:
        sleep_interruptibly(sleep_s, ctx)
    if ctx.tid in opts.get("raise_on_tids", []):
        raise RuntimeError(f"synthetic failure requested for trial {ctx.tid}")
    if ctx.tid in opts.get("nan_on_tids", []):
        loss = math.nan
    if opts.get("record_dir"):
        os.makedirs(opts["record_dir"], exist_ok=True)
        with open(os.path.join(opts["record_dir"], f"tid{ctx.tid}-{uuid.uuid4().hex[:8]}"), "w") as fh:
            fh.write(f"{os.getpid()} attempt {ctx.attempt}\n")
    if ctx.artifacts_dir and opts.get("write_artifacts", True):
        with open(os.path.join(ctx.artifacts_dir, "result.txt"), "w") as fh:
            fh.write(f"x={x} loss={loss}\n")
    return {"status": "ok", "loss": loss, "x": x}


def sleep(study, params: dict, ctx: TrialContext) -> dict:
    """Sleep ``sleep_s`` (default 1 s): the pool-efficiency benchmark's objective."""
    sleep_interruptibly(float(study.objective.get("sleep_s", 1.0)), ctx)
    x = float(params.get("x", 0.0))
    return {"status": "ok", "loss": (x - 0.3) ** 2}



class PoolKind(ObjectiveKind):
    """The pool's own objectives, launched as ``launch NAME --objective KIND [--options JSON]``: no model, no
    recipe, the loss they return (minimised), the space given or ``x`` on [-1, 1]."""

    def wanted(self, opts: LaunchOptions) -> bool:
        return opts.objective == self.name

    def check_options(self, opts: LaunchOptions) -> None:
        no_command_options(opts)
        if opts.augment:
            raise ConfigError("--augment applies to the built-in models")

    def default_name(self, opts: LaunchOptions) -> str:
        return f"{opts.model}-{self.name}"

    def _options(self, opts: LaunchOptions) -> dict:
        import json

        try:
            options = json.loads(opts.options) if opts.options else {}
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--options: invalid JSON: {exc.msg}") from None
        if not isinstance(options, dict):
            raise ConfigError("--options: give a JSON object")
        return options

    def check(self, opts: LaunchOptions, space: dict | None) -> None:
        self._options(opts)

    def build(self, opts: LaunchOptions, core: dict, space: dict | None) -> Built:
        from ..store.studies import Study

        study = Study(objective={**self._options(opts), "kind": self.name}, space=space, **core).validate()
        return Built(study, f"the {self.name} objective")

    def describe(self, study) -> str:
        return f"the {self.name} objective"


class SyntheticKind(PoolKind):
    name = "synthetic"
    runner = "mongotune.objectives.synthetic:synthetic"
    test_only = True


class SleepKind(PoolKind):
    name = "sleep"
    runner = "mongotune.objectives.synthetic:sleep"
