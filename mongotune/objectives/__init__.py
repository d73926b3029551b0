"""What a worker runs for a trial, and everything else that depends on the kind of study.

A study's ``objective`` setting is ``{"kind": KIND, ...the kind's settings}``.
``objective_kind(study)`` returns its kind from a fixed table (``kinds``):
Keras built-in models and ``--model-fn`` models (``keras_launch``), commands
(``command_kind``), stock hyperopt ``fmin`` jobs (``stock_fmin``), and the
pool's own ``synthetic`` (tests only) and ``sleep`` (benchmarks) objectives.
A kind resolves its study's space, names the local paths it needs, builds its
study at launch (``launch.plan_launch``), reports the study's metric, says
whether it runs the user's code and whether ``final`` retrains it, and runs a
trial::

    run(study, params: dict, ctx: TrialContext) -> dict | float

which returns the result (``{"status": "ok", "loss": ..., ...metrics}``), or
raises ``TrialFailure`` (recorded, the worker goes on) or ``TrialPruned``.
Its module is imported when first used, so a worker loads TensorFlow only for
Keras trials.

Kinds that run the user's own code (a command, an importable model function)
need the worker's explicit consent (``mongotune worker --allow-user-code``):
without it a worker never takes their trials, so a database writer cannot
make a worker run code it was not told to trust.  Test kinds run only where
mongotune's own test suite switched them on (``MONGOTUNE_TEST_OBJECTIVES=1``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from ..errors import TrialFailure


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
    checkpoints: object | None = None  # pool.checkpoints.TrialCheckpoints: save/restore in the study's store
    extra: dict = field(default_factory=dict)

    def check_stop(self) -> None:
        if self.should_stop():
            raise TrialFailure("interrupted", "trial stopped: lease lost or worker shutting down")


from .kinds import (TEST_SWITCH, ObjectiveKind, describe, kind_for_trial, kind_named,  # noqa: E402,F401
                    objective_kind, run_trial, runs_user_code, test_kinds_enabled)


def sleep_interruptibly(seconds: float, ctx: TrialContext) -> None:
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return
        ctx.check_stop()
        time.sleep(min(left, 0.05))
