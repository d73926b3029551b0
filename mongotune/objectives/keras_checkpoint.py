"""The Keras trial's checkpoints: saved at the end of epochs, restored when a requeued trial starts again.

A checkpoint holds the model with its optimizer state (``model.save``, a
``.keras`` file), the early-stopping state (its best weights as ``best.npz``
when they are not the current ones) and, in the trial's pointer, the epoch,
the history and the epoch timings so far (``ctx.checkpoints``,
``pool.checkpoints``).  A resumed trial builds and compiles its model as
usual, loads the weights and optimizer variables (``load_weights``: no model
config is deserialized, no code runs), and fits from the next epoch: its
curve continues, and its epoch budget counts the epochs already done.

A checkpoint is written after the epoch's reading is on the curve, so a
worker killed in between trains that epoch again and the curve holds it once.
None is written after the last epoch or when training stops anyway.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np

from ..errors import TrialFailure

log = logging.getLogger("mongotune.keras")

MODEL_FILE, BEST_FILE = "model.keras", "best.npz"


def _floats(values, n: int) -> list[float]:
    if not isinstance(values, list) or len(values) != n or not all(isinstance(v, (int, float)) for v in values):
        raise ValueError("not a list of numbers of the checkpoint's length")
    return [float(v) for v in values]


def _checked_state(ref: dict, epochs: int) -> dict:
    """The pointer's state, each field checked (it comes from the database): ValueError if unusable."""
    step, state = ref.get("step"), ref.get("state")
    if not isinstance(step, int) or not 0 < step < epochs or not isinstance(state, dict):
        raise ValueError(f"checkpoint step {step!r} is not within the trial's {epochs} epochs")
    history = state.get("history")
    if not isinstance(history, dict):
        raise ValueError("checkpoint without history")
    early = state.get("early") if isinstance(state.get("early"), dict) else {}
    best = early.get("best")
    return {"step": step, "history": {str(k): _floats(v, step) for k, v in history.items()},
            "epoch_seconds": _floats(state.get("epoch_seconds"), step),
            "early": {"wait": int(early.get("wait") or 0), "best_epoch": int(early.get("best_epoch") or 0),
                      "best": float(best) if isinstance(best, (int, float)) and math.isfinite(best) else None}}


def restore(run, ctx, seed: int) -> dict | None:
    """Resume ``run`` from the trial's last checkpoint if it has one that fits: the model's weights and
    optimizer loaded, ``run.start_epoch`` set; returns what the rest of training needs (None: from the start)."""
    cp = getattr(ctx, "checkpoints", None)
    if cp is None or run.art is None or not run.training.checkpoints:
        return None
    loaded: dict = {}

    def apply(ref: dict, paths: dict) -> None:
        loaded.update(_checked_state(ref, run.training.epochs))
        try:
            run.model.optimizer.build(run.model.trainable_variables)
            run.model.load_weights(paths[MODEL_FILE])
            if BEST_FILE in paths:
                with np.load(paths[BEST_FILE], allow_pickle=False) as npz:
                    loaded["best_weights"] = [npz[f"arr_{i}"] for i in range(len(npz.files))]
        except Exception as exc:  # noqa: BLE001 - a checkpoint that matches its checksum but not this model
            raise TrialFailure("checkpoint", f"cannot load the checkpoint of epoch {ref.get('step')}: "
                                             f"{type(exc).__name__}: {str(exc)[:300]}") from None

    got = cp.restore(run.art / "resume", apply)
    shutil.rmtree(run.art / "resume", ignore_errors=True)
    if got is None:
        return None
    import keras

    keras.utils.set_random_seed((seed + loaded["step"]) % (2**31))  # batches differ from the lost run's
    run.start_epoch = loaded["step"]
    return loaded


def early_stopping(resumed: dict | None, **kwargs):
    """Keras's EarlyStopping, which on a resumed trial starts where the checkpoint left it."""
    import keras

    class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if resumed:
                early = resumed["early"]
                self.wait, self.best_epoch = early["wait"], early["best_epoch"]
                self.best = early["best"]
                if self.best is not None:
                    self.best_weights = resumed.get("best_weights") or self.model.get_weights()

    return ResumableEarlyStopping(**kwargs)


def callback(run, ctx, early, resumed: dict | None):
    """The callback that checkpoints ``run`` at the end of its epochs (every ``checkpoint_every`` seconds at
    most); None when the trial has no checkpoints."""
    cp = getattr(ctx, "checkpoints", None)
    if cp is None or run.art is None or not run.training.checkpoints:
        return None
    import keras

    class Checkpointer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.history = {k: list(v) for k, v in (resumed or {}).get("history", {}).items()}
            self.last = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            for k, v in (logs or {}).items():
                self.history.setdefault(k, []).append(float(v))
            done = epoch + 1
            if self.model.stop_training or done >= run.training.epochs:
                return
            if time.monotonic() - self.last < float(run.training.checkpoint_every or 0):
                return
            self.last = time.monotonic()
            _save(run, cp, early, done, self.history, ctx.tid)

    return Checkpointer()


def _save(run, cp, early, step: int, history: dict, tid: int) -> None:
    tmp = Path(run.art) / ".checkpoint"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        files = {MODEL_FILE: tmp / MODEL_FILE}
        run.model.save(files[MODEL_FILE])
        if early.best_weights is not None and early.best_epoch != step - 1:
            np.savez(tmp / BEST_FILE, *early.best_weights)
            files[BEST_FILE] = tmp / BEST_FILE
        best = early.best if isinstance(early.best, (int, float)) and math.isfinite(early.best) else None
        state = {"history": history, "epoch_seconds": list(run.monitor.epoch_seconds),
                 "early": {"wait": int(early.wait), "best_epoch": int(early.best_epoch), "best": best}}
        if not cp.save(step, files, state):
            log.warning("trial %s: checkpoint of epoch %d not recorded: the lease is gone", tid, step)
    except Exception as exc:  # noqa: BLE001 - a checkpoint that cannot be written: training goes on
        log.warning("trial %s: no checkpoint at epoch %d: %s: %s", tid, step, type(exc).__name__, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
