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
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
from hyperopt.base import JOB_STATE_DONE

from .. import paths
from ..errors import ConfigError
from ..store import decode, open_client
from ..store.studies import StudyStore


def pick_trial(jobs, study, tid: int | None) -> dict:
    q = {"exp_key": study.exp_key, "state": JOB_STATE_DONE, "result.status": "ok"}
    if tid is not None:
        doc = jobs.find_one({**q, "tid": tid})
        if doc is None:
            raise ConfigError(f"study {study.name!r} has no successful trial {tid}")
        return decode(doc)
    docs = [decode(d) for d in jobs.find(q)]
    docs = [d for d in docs if isinstance(d["result"].get("loss"), (int, float)) and math.isfinite(d["result"]["loss"])]
    if not docs:
        raise ConfigError(f"study {study.name!r} has no successful trial yet")
    return min(docs, key=lambda d: d["result"]["loss"])


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


def run_final(url: str, name: str, tid: int | None = None, out_dir: str | Path | None = None,
              progress: Callable[[str], None] | None = None) -> dict:
    import keras
    from sklearn.metrics import classification_report, confusion_matrix

    from ..data import DataSpec, load
    from ..objectives.keras_trial import _labels, build_for, compile_model, configure_backend, predict_classes

    say = progress or (lambda msg: None)
    client, db, parsed = open_client(url)
    try:
        store = StudyStore(db)
        study = store.get(name)
        if study.objective != "keras":
            raise ConfigError(f"study {name!r} does not train Keras models (objective {study.objective!r})")
        trial = pick_trial(db[parsed.collection], study, tid)
        params = trial["params"]
        epochs = int(trial["result"].get("best_epoch") or trial["result"].get("epochs") or 1)
        out = Path(out_dir) if out_dir else paths.artifacts_dir() / name / "final"
        out.mkdir(parents=True, exist_ok=True)

        env = configure_backend(study.training.mixed_precision, study.training.xla)
        say(f"loading dataset {study.dataset.get('name')}")
        ds = load(DataSpec.from_dict(study.dataset))
        keras.utils.set_random_seed(int(study.training.seed))
        model_def, model, coarse = build_for(study, params, ds)
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
            "created": datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None),
        }
        (out / "final.json").write_text(json.dumps(summary, indent=2, default=str))
        store.update(name, final=summary)
        summary["report_text"] = report_txt
        return summary
    finally:
        client.close()
