"""The whole product on real pieces: server process, 2 worker processes, Keras training."""

from __future__ import annotations

import os
import signal

import pytest
from hyperopt.base import JOB_STATE_DONE

from helpers import db_of, log_text, mongotune, run_cli, stop, wait_for

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]


def test_launch_kill_coordinator_resume_keras_digits(mongo_url, tmp_path):
    max_evals = 5
    # two workers of their own (a launch's --workers stop with it): they stay in the pool when the coordinator dies
    workers = [mongotune("worker", "--mongo", mongo_url, "--study", "e2e", "--gpu", "none", log=tmp_path / f"w{i}.log")
               for i in range(2)]
    coord = mongotune("launch", "baseline", "--study", "e2e", "--dataset", "digits", "--max-evals", max_evals,
                      "--epochs", 2, "--patience", 1, "--algo", "rand", "--pruner", "none", "--xla", "on",
                      "--mongo", mongo_url, "-q", log=tmp_path / "launch.log")
    db = db_of(mongo_url)
    try:
        wait_for(lambda: db.jobs.count_documents({"exp_key": "mongotune:e2e", "state": JOB_STATE_DONE}) >= 2, 600, 0.2,
                 what="two finished trials")
        coord.send_signal(signal.SIGKILL)  # the coordinator dies; the two workers stay in the pool
        coord.wait()
        r = run_cli("resume", "e2e", "--mongo", mongo_url, "-q", timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr + log_text(tmp_path / "launch.log")
        assert f"{max_evals}/{max_evals} trials finished" in r.stdout
        assert "best validation accuracy" in r.stdout
    finally:
        stop(coord, signal.SIGKILL)
        codes = [stop(w) for w in workers]
    assert codes == [0, 0], [log_text(tmp_path / f"w{i}.log")[-2000:] for i in range(2)]
    docs = list(db.jobs.find({"exp_key": "mongotune:e2e"}))
    assert len(docs) == max_evals
    assert len({d["tid"] for d in docs}) == max_evals
    assert all(d["state"] == JOB_STATE_DONE for d in docs)
    # every trial ran once: one reservation each, never requeued, never expired
    assert all(not d.get("requeues") and not d.get("lease_expiries") and d["attempts"] == 0 for d in docs)
    assert len({d["worker"]["pid"] for d in docs}) == 2
    ok = [d for d in docs if d["result"]["status"] == "ok"]
    assert ok, [d["result"] for d in docs]
    for d in ok:
        res = d["result"]
        assert res["loss"] == pytest.approx(-res["val_accuracy"] ** 2)  # the baseline recipe's loss
        assert 0.0 <= res["val_accuracy"] <= 1.0
        assert 1 <= res["epochs"] <= 2 and len(res["history"]["val_accuracy"]) == res["epochs"]
        assert set(res["per_class"]) == {str(i) for i in range(10)}
        assert res["params_count"] >= res["params"] > 0  # trainable ones: an objective a study may take
        assert res["inference_ms"] > 0 and res["train_seconds"] > 0
        assert res["xla"] is True and res["mixed_precision"] is False  # XLA forced on; no GPU here: float32
        assert d["artifacts"]["host"] and os.path.exists(os.path.join(d["artifacts"]["path"], "params.json"))
        assert d["curve"] and [p["step"] for p in d["curve"]] == list(range(1, res["epochs"] + 1))
        assert [p["value"] for p in d["curve"]] == pytest.approx(res["history"]["val_accuracy"])
    # --keep-models 3 (the default): the three best trials keep their saved model, the others' are gone
    has_model = {d["tid"]: os.path.exists(os.path.join(d["artifacts"]["path"], "model.keras")) for d in ok}
    kept = [d["result"]["loss"] for d in ok if has_model[d["tid"]]]
    gone = [d["result"]["loss"] for d in ok if not has_model[d["tid"]]]
    assert len(kept) == min(3, len(ok)) and (not gone or max(kept) <= min(gone))
    assert max(d["result"]["val_accuracy"] for d in ok) > 0.5  # real learning, not chance (0.1)
    st = db.studies.find_one({"_id": "e2e"})
    assert st["status"] == "done" and st["best"]["loss"] == min(d["result"]["loss"] for d in ok)
    board = run_cli("leaderboard", "e2e", "--mongo", mongo_url)
    assert board.returncode == 0 and str(st["best"]["tid"]) in board.stdout

    # final: retrain the best on train+val, test once, export a model that takes raw uint8 images
    out = tmp_path / "final"
    r = run_cli("final", "e2e", "--mongo", mongo_url, "--out", out, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "test accuracy" in r.stdout and "macro avg" in r.stdout
    for name in ("classification_report.txt", "classification_report.json", "confusion_matrix.png", "model.keras"):
        assert (out / name).stat().st_size > 0, name
    st = db.studies.find_one({"_id": "e2e"})
    assert st["final"]["tid"] == st["best"]["tid"] and 0.0 <= st["final"]["test_accuracy"] <= 1.0

    import json

    import keras
    import numpy as np
    from sklearn.datasets import load_digits

    from mongotune.models import load_zoo

    load_zoo()  # registers the custom layers

    report = json.loads((out / "classification_report.json").read_text())
    assert report["accuracy"] == pytest.approx(st["final"]["test_accuracy"])
    model = keras.saving.load_model(out / "model.keras")
    digits = load_digits()
    raw = np.clip(np.rint(digits.images[:64] * (255 / 16)), 0, 255).astype("uint8")[..., None]  # as the cache
    probs = model.predict(raw, verbose=0)
    assert probs.shape == (64, 10) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    assert float(np.mean(probs.argmax(1) == digits.target[:64])) > 0.5
