"""The Keras trial: build, compile, fit with early stopping and pruning, evaluate, save artifacts.

This is the "tuner" half of mongotune, run by a worker for studies whose
objective kind is ``keras``.  The dataset is opened once per process (memory
mapped) and reused across trials; the model comes from the registry by name.
After every epoch the monitored metric goes to ``ctx.report_step``, which
records it on the trial's curve and asks the study's pruner whether to stop.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import TrialFailure, TrialPruned
from . import keras_checkpoint
from .keras_cost import model_cost, trainable_params
from .keras_settings import LOSSES, NATIVE_SHAPES, SWITCHES, KerasSettings, Training, input_shape_of  # noqa: F401

log = logging.getLogger("mongotune.keras")

MEMORY_GUARD_FRACTION = 0.9


def configure_backend(mixed_precision: str = "auto", xla: str = "auto") -> dict:
    """Before each trial: mixed precision when a GPU is present (or forced); whether to XLA-compile.

    ``auto`` means on with a GPU and off on CPU.  XLA is never used with the
    PyTorch backend, whose ``jit_compile`` means ``torch.compile``.
    """
    import keras

    from ..devices import has_gpu

    gpu = has_gpu()
    backend = keras.backend.backend()
    use_mp = mixed_precision == "on" or (mixed_precision == "auto" and gpu)
    use_xla = backend != "torch" and (xla == "on" or (xla == "auto" and gpu))
    policy = "mixed_float16" if use_mp else "float32"
    if keras.mixed_precision.global_policy().name != policy:  # a worker may serve studies that differ
        keras.mixed_precision.set_global_policy(policy)
    return {"gpu": gpu, "mixed_precision": use_mp, "xla": use_xla, "backend": backend}


def _labels(ds, split: str, heads: list[str]):
    y = getattr(ds, f"y_{split}")
    if len(heads) == 1:
        return y
    out = {}
    for h in heads:
        out[h] = y if h == "fine" else ds.extra_labels[h][split]
    return out


def _subsample(x, y, n: int | None, seed: int):
    if not n or n >= len(x):
        return x, y
    idx = np.sort(np.random.default_rng(seed).permutation(len(x))[:n])
    if isinstance(y, dict):
        return x[idx], {k: v[idx] for k, v in y.items()}
    return x[idx], y[idx]


def _make_callback_class():
    import keras

    class TrialMonitor(keras.callbacks.Callback):
        """Epoch timings, NaN detection, progress reports and cooperative stopping."""

        def __init__(self, ctx, epochs, monitor):
            super().__init__()
            self.ctx = ctx
            self.epochs = epochs
            self.monitor = monitor
            self.pruned_at: tuple[int, float] | None = None
            self.epoch_seconds: list[float] = []
            self.nan_at: tuple[int, float] | None = None
            self.stopped_by_ctx = False
            self._t0 = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            # only a cheap flag check per batch: reading the loss here would
            # force a device sync every step; NaN is caught at the epoch's end
            if self.ctx.should_stop():
                self.stopped_by_ctx = True
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_seconds.append(time.perf_counter() - self._t0)
            logs = {k: float(v) for k, v in (logs or {}).items()}
            self.ctx.set_progress({"epoch": epoch + 1, "epochs": self.epochs, **logs})
            if any(not math.isfinite(v) for k, v in logs.items() if k.endswith("loss")) and self.nan_at is None:
                self.nan_at = (epoch, next(v for k, v in logs.items() if k.endswith("loss") and not math.isfinite(v)))
                self.model.stop_training = True
                return
            value = logs.get(self.monitor)
            if value is not None and math.isfinite(value) and self.ctx.report_step(epoch + 1, value):
                self.pruned_at = (epoch + 1, value)
                self.model.stop_training = True

    return TrialMonitor


def compile_model(model, model_def, params: dict, num_coarse_classes: int | None = None, xla: bool = False):
    from ..models import make_optimizer

    heads = model_def.output_names(params, num_coarse_classes=num_coarse_classes)
    lr = float(model_def.learning_rate(params))
    opt = make_optimizer(str(params.get("optimizer", "adam")), lr)
    model.compile(optimizer=opt, jit_compile=xla,
                  **model_def.compile_kwargs(params, num_coarse_classes=num_coarse_classes))
    return heads


def _accuracy_key(history: dict, heads: list[str], prefix: str = "val_") -> str | None:
    for key in ([f"{prefix}accuracy"] if len(heads) == 1 else [f"{prefix}{heads[0]}_accuracy"]):
        if key in history:
            return key
    cands = [k for k in history if k.startswith(prefix) and k.endswith("accuracy")]
    return sorted(cands)[0] if cands else None


def predict_classes(model, x, heads: list[str], batch_size: int = 256) -> np.ndarray:
    pred = model.predict(x, batch_size=batch_size, verbose=0)
    if isinstance(pred, dict):
        pred = pred[heads[0]]
    elif isinstance(pred, (list, tuple)):
        pred = pred[0]
    return np.asarray(pred).argmax(axis=-1)


def per_class_report(y_true, y_pred, class_names: list[str]) -> dict:
    from sklearn.metrics import precision_recall_fscore_support

    labels = list(range(len(class_names)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {name: {"precision": round(float(p[i]), 4), "recall": round(float(r[i]), 4),
                   "f1": round(float(f[i]), 4), "support": int(s[i])} for i, name in enumerate(class_names)}


def loss_from(kind: str, val_accuracy: float, val_loss: float | None) -> float:
    if kind == "neg_val_accuracy":
        return -val_accuracy
    if kind == "neg_val_accuracy_squared":
        return -(val_accuracy ** 2)
    if kind == "val_loss":
        return float(val_loss) if val_loss is not None else math.nan
    raise TrialFailure("config", f"unknown loss {kind!r}")


def build_for(settings: KerasSettings, params: dict, ds):
    """Build (uncompiled) the study's model for ``params`` on dataset ``ds``."""
    if settings.model_fn:
        return _build_user_model(settings.model_fn, params, ds)
    from ..models import get_model

    model_def = get_model(settings.model)
    coarse = None
    if "coarse" in getattr(ds, "extra_labels", {}) and settings.model == "hyperresnet":
        coarse = len(ds.extra_class_names.get("coarse") or []) or int(ds.extra_labels["coarse"]["train"].max()) + 1
    model = model_def.build(params, tuple(ds.input_shape), ds.num_classes, num_coarse_classes=coarse,
                            weights=settings.training.weights)
    return model_def, model, coarse


def _build_user_model(ref: str, params: dict, ds):
    """The user's ``build_model`` (``--model-fn``): a clear trial failure if it does not import or build here."""
    import socket

    from ..errors import ConfigError
    from .model_fn import FunctionModel

    model_def = FunctionModel(ref)
    try:
        model = model_def.build(params, tuple(ds.input_shape), ds.num_classes)
    except ConfigError as exc:
        raise TrialFailure("model-fn", f"{exc} (on {socket.gethostname()})") from None
    return model_def, model, None


def memory_guard(model, params: dict) -> dict:
    """Fail fast (recorded on the trial) when the configuration cannot fit."""
    from ..devices import device_memory_bytes
    from ..models import estimate_memory

    est = estimate_memory(model, int(params.get("batch_size", 32)), optimizer=str(params.get("optimizer", "adam")))
    budget = device_memory_bytes()
    if est["total_bytes"] > MEMORY_GUARD_FRACTION * budget:
        raise TrialFailure(
            "memory-guard",
            f"needs about {est['total_bytes'] / 2**30:.1f} GiB ({est['params']:,} parameters, batch "
            f"{params.get('batch_size')}), more than {MEMORY_GUARD_FRACTION:.0%} of the "
            f"{budget / 2**30:.1f} GiB this worker has",
        )
    return est


@dataclass
class _Run:
    """One trial's training: its settings, data, model and what the monitor saw."""

    training: Training
    ds: object
    model: object
    heads: list[str]
    x_train: object
    x_val: object
    y_val: object
    env: dict
    est: dict
    art: Path | None
    started: float  # after the backend was configured: what train_seconds counts from
    monitor: object = None
    history: dict | None = None
    start_epoch: int = 0  # epochs done before this attempt (resumed from a checkpoint)


def train_trial(study, params: dict, ctx) -> dict:
    """The ``keras`` kind's trial: build and compile the study's model for ``params``, fit it with early
    stopping, reporting each epoch's monitored metric (pruning), evaluate it, write its artifacts."""
    run, y_train = _prepare(KerasSettings.of(study), params, ctx)
    resumed = keras_checkpoint.restore(run, ctx, _seed(run.training, ctx))
    _fit(run, y_train, params, ctx, resumed)
    if run.monitor.pruned_at is not None:
        _pruned(run)
    result = _evaluate(run, int(params.get("batch_size", 32)))
    result["train_seconds"] = time.perf_counter() - run.started
    if run.start_epoch:
        result["resumed_from_epoch"] = run.start_epoch
    _save(run, result)
    _clear_session()
    return result


def _prepare(settings: KerasSettings, params: dict, ctx) -> tuple[_Run, object]:
    """The backend configured, the data opened, the model built (memory-guarded) and compiled."""
    import keras

    from ..data import DataSpec, load

    training = settings.training
    env = configure_backend(training.mixed_precision, training.xla)
    started = time.perf_counter()
    ds = load(DataSpec.from_dict(settings.dataset))
    seed = _seed(training, ctx)
    keras.utils.set_random_seed(seed % (2**31))
    model_def, model, coarse = build_for(settings, params, ds)
    est = memory_guard(model, params)
    heads = compile_model(model, model_def, params, coarse, xla=env["xla"])
    x_train, y_train = _subsample(ds.x_train, _labels(ds, "train", heads), training.max_train_samples, seed)
    art = Path(ctx.artifacts_dir) if ctx.artifacts_dir else None
    run = _Run(training, ds, model, heads, x_train, ds.x_val, _labels(ds, "val", heads), env, est, art, started)
    return run, y_train


def _seed(training: Training, ctx) -> int:
    return int(training.seed) * 100003 + int(ctx.tid)


def _fit(run: _Run, y_train, params: dict, ctx, resumed: dict | None = None) -> None:
    """``model.fit`` with the trial's monitor and early stopping; a failure of the trial raised as one."""
    import keras

    training, heads = run.training, run.heads
    batch_size = int(params.get("batch_size", 32))
    monitor_metric = "val_loss" if training.loss == "val_loss" else (
        "val_accuracy" if len(heads) == 1 else f"val_{heads[0]}_accuracy")
    run.monitor = _make_callback_class()(ctx, training.epochs, monitor_metric)
    run.monitor.epoch_seconds = list((resumed or {}).get("epoch_seconds", []))
    early = keras_checkpoint.early_stopping(resumed, monitor=monitor_metric, patience=training.patience,
                                            mode="min" if monitor_metric == "val_loss" else "max",
                                            restore_best_weights=True)
    saver = keras_checkpoint.callback(run, ctx, early, resumed)
    callbacks = [run.monitor, early, *([saver] if saver else [])]
    if run.art is not None:
        run.art.mkdir(parents=True, exist_ok=True)
        (run.art / "params.json").write_text(json.dumps(params, indent=2, default=str))
        if training.tensorboard and _tensorboard_available():
            callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run.art / "tensorboard"), write_graph=False))
    try:
        hist = run.model.fit(run.x_train, y_train, batch_size=batch_size, epochs=training.epochs,
                             validation_data=(run.x_val, run.y_val), callbacks=callbacks, verbose=0, shuffle=True,
                             initial_epoch=run.start_epoch)
    except Exception as exc:
        name = type(exc).__name__
        if name == "ResourceExhaustedError" or "out of memory" in str(exc).lower() or "OOM" in str(exc):
            raise TrialFailure("oom", f"out of memory while training (batch {batch_size}): {name}") from None
        raise
    before = (resumed or {}).get("history", {})
    run.history = {k: [*before.get(k, []), *map(float, vals)] for k, vals in hist.history.items()}
    if run.monitor.stopped_by_ctx:
        raise TrialFailure("interrupted", "training stopped: lease lost or worker shutting down")
    if run.monitor.nan_at is not None:
        epoch, value = run.monitor.nan_at
        raise TrialFailure("nan", f"training loss became {value} in epoch {epoch + 1}")


def _pruned(run: _Run) -> None:
    """Raise ``TrialPruned`` with the result of a pruned trial: the loss the search learns from is that of the
    best epoch so far (see README)."""
    history, monitor = run.history, run.monitor
    val_losses = history.get("val_loss") or [math.nan]
    acc_key = _accuracy_key(history, run.heads)
    step, _ = monitor.pruned_at
    best_acc = max(history[acc_key]) if acc_key else math.nan
    result = {"status": "ok", "loss": loss_from(run.training.loss, best_acc, min(val_losses)),
              "val_accuracy": best_acc, "val_loss": float(min(val_losses)), "epochs": len(monitor.epoch_seconds),
              "best_epoch": int(np.argmax(history[acc_key]) + 1) if acc_key else step,
              "seconds_per_epoch": float(np.mean(monitor.epoch_seconds)), "history": history,
              "train_images": int(len(run.x_train)), "params_count": int(run.model.count_params()),
              "params": trainable_params(run.model)}
    if run.art is not None:
        (run.art / "history.json").write_text(json.dumps(history, indent=2))
    _clear_session()
    raise TrialPruned(step, monitor.pruned_at[1], result)


def _evaluate(run: _Run, batch_size: int) -> dict:
    """The finished trial's result: validation accuracy of the restored best weights, per class, history."""
    history, monitor, heads, training = run.history, run.monitor, run.heads, run.training
    val_losses = history.get("val_loss") or [math.nan]
    acc_key = _accuracy_key(history, heads)
    y_pred = predict_classes(run.model, run.x_val, heads, batch_size=max(batch_size, 256))
    y_val_main = run.y_val if len(heads) == 1 else run.y_val[heads[0]]
    val_accuracy = float(np.mean(y_pred == np.asarray(y_val_main)))
    best_epoch = int(np.argmax(history[acc_key]) + 1) if acc_key else len(val_losses)
    if training.loss == "val_loss":
        best_epoch = int(np.nanargmin(val_losses) + 1)
    result = {
        "status": "ok",
        "loss": loss_from(training.loss, val_accuracy, min(val_losses)),
        "val_accuracy": val_accuracy,
        "val_loss": float(min(val_losses)),
        "epochs": len(monitor.epoch_seconds),
        "best_epoch": best_epoch,
        "seconds_per_epoch": float(np.mean(monitor.epoch_seconds)) if monitor.epoch_seconds else None,
        "epoch_seconds": [round(s, 4) for s in monitor.epoch_seconds],
        "train_images": int(len(run.x_train)),
        "params_count": int(run.model.count_params()),
        **model_cost(run.model, run.x_val),  # params (trainable), inference_ms: objectives a study may take
        "memory_estimate_bytes": int(run.est["total_bytes"]),
        "per_class": per_class_report(y_val_main, y_pred, list(run.ds.class_names)),
        "history": history,
        "backend": run.env["backend"],
        "mixed_precision": run.env["mixed_precision"],
        "xla": run.env["xla"],
    }
    for h in heads[1:]:
        key = f"val_{h}_accuracy"
        if key in history:
            result[key] = max(history[key])
    return result


def _save(run: _Run, result: dict) -> None:
    """The trial's history, model and result summary in its artifact directory."""
    if run.art is None:
        return
    (run.art / "history.json").write_text(json.dumps(run.history, indent=2))
    if run.training.save_model:
        run.model.save(run.art / "model.keras")
    summary = {k: v for k, v in result.items() if k not in ("history",)}
    (run.art / "result.json").write_text(json.dumps(summary, indent=2, default=str))


def _clear_session() -> None:
    import keras

    keras.backend.clear_session(free_memory=True) if _accepts_free_memory() else keras.backend.clear_session()


def _tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def _accepts_free_memory() -> bool:
    import inspect

    import keras

    try:
        return "free_memory" in inspect.signature(keras.backend.clear_session).parameters
    except (TypeError, ValueError):
        return False
