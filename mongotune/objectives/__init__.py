"""The objectives a worker can run, by name: never imported from the database.

``keras`` trains a registered model (``mongotune.training``).  ``synthetic``
and ``sleep`` need no TensorFlow: they exercise the pool itself (tests,
benchmarks, smoke checks of a deployment).  A study's ``options`` dict tunes
them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

from ..errors import TrialFailure


@dataclass
class TrialContext:
    """What an objective may know and do about the trial it runs."""

    tid: int
    attempt: int
    artifacts_dir: str | None
    should_stop: Callable[[], bool] = lambda: False
    report: Callable[[dict], None] = lambda info: None
    device_memory_bytes: int | None = None
    extra: dict = field(default_factory=dict)


def _sleep_interruptibly(seconds: float, ctx: TrialContext) -> None:
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return
        if ctx.should_stop():
            raise TrialFailure("interrupted", "trial stopped: lease lost or worker shutting down")
        time.sleep(min(left, 0.05))


def synthetic(study, params: dict, ctx: TrialContext) -> dict:
    """Loss ``(x - 0.3)^2`` after an optional sleep; can raise or return NaN on chosen trials.

    options: ``sleep_s``, ``raise_on_tids``, ``nan_on_tids``, and ``record_dir``
    (a directory where each evaluation that runs to the end leaves one file,
    so tests can count how often a trial really ran).
    """
    opts = study.options or {}
    _sleep_interruptibly(float(opts.get("sleep_s", 0.0)), ctx)
    if ctx.tid in opts.get("raise_on_tids", []):
        raise RuntimeError(f"synthetic failure requested for trial {ctx.tid}")
    x = float(params.get("x", 0.0))
    loss = math.nan if ctx.tid in opts.get("nan_on_tids", []) else (x - 0.3) ** 2
    if opts.get("record_dir"):
        import os
        import uuid

        os.makedirs(opts["record_dir"], exist_ok=True)
        with open(os.path.join(opts["record_dir"], f"tid{ctx.tid}-{uuid.uuid4().hex[:8]}"), "w") as fh:
            fh.write(f"{os.getpid()} attempt {ctx.attempt}\n")
    return {"status": "ok", "loss": loss, "x": x}


def sleep(study, params: dict, ctx: TrialContext) -> dict:
    """Sleep ``options.sleep_s`` (default 1 s): the pool-efficiency benchmark's objective."""
    seconds = float((study.options or {}).get("sleep_s", 1.0))
    _sleep_interruptibly(seconds, ctx)
    x = float(params.get("x", 0.0))
    return {"status": "ok", "loss": (x - 0.3) ** 2}


def keras(study, params: dict, ctx: TrialContext) -> dict:
    from .keras_trial import train_trial

    return train_trial(study, params, ctx)


REGISTRY: dict[str, Callable] = {"keras": keras, "synthetic": synthetic, "sleep": sleep}


def get_objective(name: str) -> Callable:
    try:
        return REGISTRY[name]
    except KeyError:
        raise TrialFailure("config", f"unknown objective {name!r}; this worker knows {sorted(REGISTRY)}") from None
