"""``mongotune final``: the chosen configuration, retrained and tested once.

The best trial (or a chosen one) is retrained on train + validation for the
epoch count at which it validated best, without early stopping; then the
official test split is evaluated exactly once.  Written to the output folder:
the classification report (text and JSON), a confusion matrix PNG, the
exported ``.keras`` model (takes raw uint8 images) and ``final.json``; the
summary is also recorded on the study document.
"""

from __future__ import annotations

import datetime
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import paths, safepath
from ..errors import ConfigError
from ..objectives import objective_kind
from ..store import open_client
from ..store.studies import Study, StudyStore
from ..store.trialdoc import TrialRecord, TrialStore


@dataclass
class FinalPlan:
    """What ``final`` will retrain, checked without TensorFlow (so a bad name fails in a second)."""

    url: str
    study: Study
    trial: TrialRecord
    out: Path


def plan_final(url: str, name: str, tid: int | None = None, out_dir: str | Path | None = None, *,
               allow_user_code: bool = False) -> FinalPlan:
    client, db, parsed = open_client(url)
    try:
        trials = TrialStore(db, db[parsed.collection])
        study = StudyStore(db).resolve(name, trials)
        try:
            kind = objective_kind(study)
        except ConfigError as exc:
            raise ConfigError(f"study {name!r}: {exc}") from None
        kind.check_final(study, allow_user_code)  # Keras models only; a --model-fn one with --allow-user-code
        if tid is not None:
            trial = trials.get(study.exp_key, tid)
            if trial is None or trial.loss is None:
                raise ConfigError(f"study {name!r} has no successful trial {tid}")
        else:
            trial = trials.best(study.exp_key)  # the study's best, as every view shows it
            if trial is None:
                raise ConfigError(f"study {name!r} has no successful trial yet")
        out = Path(out_dir) if out_dir else safepath.study_dir(paths.artifacts_dir(), study.name) / "final"
        return FinalPlan(url, study, trial, out)
    finally:
        client.close()


def _concat(a, b):
    if isinstance(a, dict):
        return {k: np.concatenate([a[k], b[k]]) for k in a}
    return np.concatenate([a, b])


def confusion_png(cm: np.ndarray, class_names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * n + 3), max(4, 0.5 * n + 2.5)), dpi=110)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_final(plan: FinalPlan, progress: Callable[[str], None] | None = None) -> dict:
    import keras
    from sklearn.metrics import classification_report, confusion_matrix

    from ..data import DataSpec, load
    from ..objectives.keras_trial import (KerasSettings, _labels, build_for, compile_model, configure_backend,
                                          predict_classes)

    say = progress or (lambda msg: None)
    client, db, parsed = open_client(plan.url)
    try:
        store = StudyStore(db)
        study, name, out = plan.study, plan.study.name, plan.out
        settings = KerasSettings.of(study)
        trial = {"tid": plan.trial.tid, "result": plan.trial.result}
        params = plan.trial.params
        epochs = int(trial["result"].get("best_epoch") or trial["result"].get("epochs") or 1)
        out.mkdir(parents=True, exist_ok=True)

        env = configure_backend(settings.training.mixed_precision, settings.training.xla)
        say(f"loading dataset {settings.dataset.get('name')}")
        ds = load(DataSpec.from_dict(settings.dataset))
        keras.utils.set_random_seed(int(settings.training.seed))
        model_def, model, coarse = build_for(settings, params, ds)
        heads = compile_model(model, model_def, params, coarse, xla=env["xla"])
        x = np.concatenate([ds.x_train, ds.x_val])
        y = _concat(_labels(ds, "train", heads), _labels(ds, "val", heads))
        say(f"retraining trial {trial['tid']} on {len(x)} images for {epochs} epoch(s)")
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=int(params.get("batch_size", 32)), epochs=epochs, verbose=0, shuffle=True)
        train_s = time.perf_counter() - t0

        say(f"evaluating on the test split ({len(ds.x_test)} images)")
        y_pred = predict_classes(model, ds.x_test, heads)
        y_true = np.asarray(ds.y_test)
        names = [str(c) for c in ds.class_names]
        labels = list(range(len(names)))
        report_txt = classification_report(y_true, y_pred, labels=labels, target_names=names, digits=3,
                                           zero_division=0)
        report = classification_report(y_true, y_pred, labels=labels, target_names=names, output_dict=True,
                                       zero_division=0)
        cm = confusion_matrix(y_true, y_pred, labels=labels)
        test_acc = float(np.mean(y_pred == y_true))
        extra = {}
        if len(heads) > 1 and "coarse" in ds.extra_labels:
            coarse_pred = model.predict(ds.x_test, verbose=0, batch_size=256)
            coarse_pred = np.asarray(coarse_pred["coarse"] if isinstance(coarse_pred, dict) else coarse_pred[1])
            extra["test_accuracy_coarse"] = float(np.mean(coarse_pred.argmax(-1) == ds.extra_labels["coarse"]["test"]))

        (out / "classification_report.txt").write_text(report_txt)
        (out / "classification_report.json").write_text(json.dumps(report, indent=2))
        confusion_png(cm, names, out / "confusion_matrix.png",
                      f"{name}: trial {trial['tid']}, test accuracy {test_acc:.4f}")
        model_path = out / "model.keras"
        model.save(model_path)
        summary = {
            "tid": trial["tid"], "params": params, "epochs": epochs, "train_images": int(len(x)),
            "test_images": int(len(y_true)), "test_accuracy": test_acc, **extra,
            "validation_accuracy": trial["result"].get("val_accuracy"), "train_seconds": round(train_s, 2),
            "model_path": str(model_path), "report_path": str(out / "classification_report.txt"),
            "confusion_matrix_path": str(out / "confusion_matrix.png"),
            # kept on the study itself, so `report` shows them without reading files the document names
            "report_text": report_txt, "confusion_matrix": cm.tolist(), "class_names": names,
            "created": datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None),
        }
        (out / "final.json").write_text(json.dumps(summary, indent=2, default=str))
        store.update(name, final=summary)
        return summary
    finally:
        client.close()
