"""What a worker runs for a trial, by kind: a fixed table, never a name taken from the database.

A study's ``objective`` setting is ``{"kind": KIND, ...the kind's settings}``.
Each kind maps here to a function in mongotune (imported when first used, so
a worker loads TensorFlow only for Keras trials) with the signature::

    run(study, params: dict, ctx: TrialContext) -> dict | float

which returns the result (``{"status": "ok", "loss": ..., ...metrics}``), or
raises ``TrialFailure`` (recorded, the worker goes on) or ``TrialPruned``.

Kinds that run the user's own code (a command, an importable model function)
need the worker's explicit consent (``mongotune worker --allow-user-code``):
without it a worker never takes their trials, so a database writer cannot
make a worker run code it was not told to trust.

Test kinds (``synthetic``: it writes files wherever its ``record_dir`` says)
run only where mongotune's own test suite switched them on
(``MONGOTUNE_TEST_OBJECTIVES=1``); anywhere else they count as user code (a
worker without ``--allow-user-code`` leaves their trials alone) and a worker
that takes one fails it with a ``config`` failure saying why.
"""

from __future__ import annotations

import importlib
import os
import time
from dataclasses import dataclass, field
from typing import Callable

from ..errors import ConfigError, TrialFailure


@dataclass
class TrialContext:
    """What an objective may know and do about the trial it runs."""

    tid: int
    attempt: int
    study: str = ""
    artifacts_dir: str | None = None  # this attempt's own directory on this host (exists)
    gpu: str | None = None  # the worker's CUDA_VISIBLE_DEVICES
    should_stop: Callable[[], bool] = lambda: False  # lease lost or worker stopping: stop now
    report_step: Callable[[int, float], bool] = lambda step, value: False  # True: the pruner says stop
    set_progress: Callable[[dict], None] = lambda info: None  # shown by status/dashboard
    device_memory_bytes: int | None = None
    extra: dict = field(default_factory=dict)

    def check_stop(self) -> None:
        if self.should_stop():
            raise TrialFailure("interrupted", "trial stopped: lease lost or worker shutting down")


@dataclass(frozen=True)
class Kind:
    name: str
    target: str  # "mongotune.objectives.module:function" (mongotune's own code only)
    metric: dict  # the default metric its trials report
    user_code: bool = False  # runs the user's code: the worker must allow it
    test_only: bool = False  # only where the test suite switched test kinds on (TEST_SWITCH)

    def load(self) -> Callable:
        module, _, fn = self.target.partition(":")
        return getattr(importlib.import_module(module), fn)


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("keras", "mongotune.objectives.keras_trial:train_trial", {"name": "val_accuracy", "goal": "max"}),
    Kind("synthetic", "mongotune.objectives.synthetic:synthetic", {"name": "loss", "goal": "min"}, test_only=True),
    Kind("sleep", "mongotune.objectives.synthetic:sleep", {"name": "loss", "goal": "min"}),
    Kind("command", "mongotune.objectives.command:run", {"name": "metric", "goal": "max"}, user_code=True),
)}


TEST_SWITCH = "MONGOTUNE_TEST_OBJECTIVES"


def test_kinds_enabled() -> bool:
    """Has the test suite switched the test kinds on in this process's environment?"""
    return os.environ.get(TEST_SWITCH) == "1"


def kind_of(objective: dict) -> Kind:
    name = objective.get("kind") if isinstance(objective, dict) else None
    try:
        return KINDS[name]
    except KeyError:
        raise ConfigError(f"unknown objective kind {name!r}; choose from: {', '.join(KINDS)}") from None


def runs_user_code(objective: dict) -> bool:
    """Does a trial of this objective run code the user supplied (a command, a model function)?"""
    kind = KINDS.get(objective.get("kind")) if isinstance(objective, dict) else None
    if kind is not None and kind.test_only and not test_kinds_enabled():
        return True
    return kind is None or kind.user_code or bool(objective.get("model_fn"))


def get_objective(objective: dict) -> Callable:
    try:
        kind = kind_of(objective)
    except ConfigError as exc:
        raise TrialFailure("config", str(exc)) from None
    if kind.test_only and not test_kinds_enabled():
        raise TrialFailure("config", f"the {kind.name!r} objective is for mongotune's own tests and runs only "
                                     f"where they set {TEST_SWITCH}=1; this worker refuses it")
    return kind.load()


def sleep_interruptibly(seconds: float, ctx: TrialContext) -> None:
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return
        ctx.check_stop()
        time.sleep(min(left, 0.05))
