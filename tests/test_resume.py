"""Trials that survive preemption: a worker killed with SIGKILL mid-trial, the trial finished from its last
checkpoint by a worker with another HOME and another artifact root (the study's GridFS store)."""

from __future__ import annotations

import json
import signal

import pytest

from helpers import db_of, log_text, mongotune, queue_trials, stop, wait_for
from mongotune.store.studies import Study, StudyStore

pytestmark = [pytest.mark.timeout(600)]

PARAMS = {"activation": "relu", "batch_size": 16, "dropout_rate": 0.0, "layer_size": 64, "learning_rate": 0.002,
          "num_layers": 1, "optimizer": "adam"}
EPOCHS = 12  # enough that the kill (after the checkpoint of epoch 2) lands mid-trial


def _keras_study(mongo_url, name: str, *, store: str = "gridfs", lease_s: float = 4.0) -> None:
    from mongotune.data import DataSpec
    from mongotune.objectives.keras_launch import keras_objective
    from mongotune.objectives.keras_trial import Training

    objective = keras_objective("baseline", DataSpec("digits"), Training(epochs=EPOCHS, patience=EPOCHS, xla="off",
                                                                        tensorboard=False))
    StudyStore(db_of(mongo_url)).create(Study(name=name, max_evals=1, objective=objective, lease_s=lease_s,
                                              metric={"name": "val_accuracy", "goal": "max"}, artifact_store=store))
    queue_trials(mongo_url, name, [PARAMS])


def _worker(mongo_url, name, tmp_path, i):
    home = tmp_path / f"home{i}"
    return mongotune("worker", "--mongo", mongo_url, "--study", name, "--gpu", "none",
                     "--artifacts", tmp_path / f"art{i}", log=tmp_path / f"w{i}.log",
                     extra_env={"MONGOTUNE_HOME": home, "HOME": home})


def _kill_after_checkpoint(db, proc, name: str, step: int) -> dict:
    """SIGKILL the worker once its trial has a checkpoint of ``step`` or later; the trial as it was then."""
    try:
        wait_for(lambda: ((db.jobs.find_one({"exp_key": f"mongotune:{name}"}) or {}).get("checkpoint") or {})
                 .get("step", 0) >= step, 300, 0.02, what=f"a checkpoint of epoch {step}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    return db.jobs.find_one({"exp_key": f"mongotune:{name}"})


def test_a_killed_keras_trial_resumes_from_its_checkpoint_on_another_host(mongo_url, tmp_path):
    _keras_study(mongo_url, "pre")
    db = db_of(mongo_url)
    first = _worker(mongo_url, "pre", tmp_path, 1)
    killed = _kill_after_checkpoint(db, first, "pre", 2)
    k = killed["checkpoint"]["step"]
    assert killed["state"] == 1 and 2 <= k < EPOCHS, log_text(tmp_path / "w1.log")[-3000:]
    # the pointed-at checkpoint is complete; at most one other (the previous, or the next one half-done)
    files = {d["metadata"]["key"] for d in db["artifacts.files"].find({"metadata.study": "pre"})}
    assert f"{killed['checkpoint']['prefix']}/model.keras" in files and len(files) <= 2
    second = _worker(mongo_url, "pre", tmp_path, 2)
    try:
        doc = wait_for(lambda: (d := db.jobs.find_one({"exp_key": "mongotune:pre"})) and d["state"] == 2 and d,
                       400, 0.2, what="the trial to finish on the second worker")
    finally:
        code = stop(second)
    log2 = log_text(tmp_path / "w2.log")
    assert code == 0, log2[-3000:]
    res = doc["result"]
    assert res["status"] == "ok", res
    assert f"resumed from the checkpoint of step {k}" in log2
    assert doc["attempts"] == 1 and len(doc["lease_expiries"]) == 1  # the dead worker's lease expired once
    # the curve continues: each epoch once in the trial's last run, the attempt marked on every point
    last = [p for p in doc["curve"] if p["lease"] == doc["curve"][-1]["lease"]]
    assert [p["step"] for p in last] == list(range(1, EPOCHS + 1))
    attempts = [p["attempt"] for p in last]
    assert attempts == [1] * k + [2] * (EPOCHS - k)
    # the budget counts epochs done: the second worker trained EPOCHS - k of them, fewer than a restart
    assert res["epochs"] == EPOCHS and len(res["history"]["val_accuracy"]) == EPOCHS
    assert res["resumed_from_epoch"] == k and attempts.count(2) < EPOCHS
    assert [p["value"] for p in last] == pytest.approx(res["history"]["val_accuracy"])
    assert res["val_accuracy"] > 0.5
    # the second worker wrote nowhere under the first one's roots, and the checkpoint is gone once done
    assert not (tmp_path / "art2").joinpath("pre", "objects").exists()
    assert db.jobs.find_one({"_id": doc["_id"]}).get("checkpoint") is None  # the worker has stopped: read again
    left = {d["metadata"]["key"] for d in db["artifacts.files"].find({"metadata.study": "pre"})}
    assert all(killed["checkpoint"]["lease"] in key for key in left)  # only what the killed worker left: gc's


def test_a_truncated_checkpoint_is_never_loaded(mongo_url, tmp_path):
    """A checkpoint whose bytes do not match the checksum (a write cut off, a disk error): the trial starts
    again from epoch 1 rather than load it."""
    _keras_study(mongo_url, "trunc", store="local")
    db = db_of(mongo_url)
    first = _worker(mongo_url, "trunc", tmp_path, 1)
    killed = _kill_after_checkpoint(db, first, "trunc", 2)
    prefix = killed["checkpoint"]["prefix"]
    model = tmp_path / "art1" / "trunc" / "objects" / prefix / "model.keras"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    second = _worker(mongo_url, "trunc", tmp_path, 1)  # same host and root: only the bytes are wrong
    try:
        doc = wait_for(lambda: (d := db.jobs.find_one({"exp_key": "mongotune:trunc"})) and d["state"] == 2 and d,
                       400, 0.2, what="the trial to finish")
    finally:
        stop(second)
    log = log_text(tmp_path / "w1.log")
    assert "checkpoint not used, the trial starts again" in log and "checksum" in log, log[-3000:]
    assert doc["result"]["status"] == "ok" and "resumed_from_epoch" not in doc["result"]
    last = [p for p in doc["curve"] if p["lease"] == doc["curve"][-1]["lease"]]
    assert [p["step"] for p in last] == list(range(1, EPOCHS + 1)) and {p["attempt"] for p in last} == {2}


TRAIN = r'''
import json, os, sys, time
ck = os.environ["MONGOTUNE_CHECKPOINT_DIR"]
state = os.path.join(ck, "state.json")
start = json.load(open(state))["epoch"] if os.path.exists(state) else 0
print(json.dumps({"resumed": os.environ["MONGOTUNE_RESUMED"], "from": start}), file=sys.stderr, flush=True)
for epoch in range(start + 1, int(sys.argv[1]) + 1):
    time.sleep(0.4)
    print(json.dumps({"step": epoch, "score": epoch / 100}), flush=True)  # the reading first, then the checkpoint
    with open(state + ".tmp", "w") as fh:
        json.dump({"epoch": epoch}, fh)
    os.replace(state + ".tmp", state)
'''


def test_a_killed_command_trial_resumes_from_its_checkpoint_dir_on_another_host(mongo_url, tmp_path):
    import sys

    from mongotune.objectives.command_settings import CommandSettings

    steps = 20
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    settings = CommandSettings(command=[sys.executable, str(script), str(steps)], metric="score", checkpoint_every=1)
    StudyStore(db_of(mongo_url)).create(Study(name="cmd", max_evals=1, objective=settings.objective_doc(),
                                              metric=settings.metric_doc(), lease_s=4.0, artifact_store="gridfs"))
    queue_trials(mongo_url, "cmd", [{"x": 1}])
    db = db_of(mongo_url)

    def worker(i):
        home = tmp_path / f"home{i}"
        return mongotune("worker", "--mongo", mongo_url, "--study", "cmd", "--allow-user-code",
                         "--artifacts", tmp_path / f"art{i}", log=tmp_path / f"w{i}.log",
                         extra_env={"MONGOTUNE_HOME": home, "HOME": home})

    killed = _kill_after_checkpoint(db, worker(1), "cmd", 3)
    k = killed["checkpoint"]["step"]
    assert 3 <= k < steps, log_text(tmp_path / "w1.log")[-3000:]
    second = worker(2)
    try:
        doc = wait_for(lambda: (d := db.jobs.find_one({"exp_key": "mongotune:cmd"})) and d["state"] == 2 and d,
                       200, 0.2, what="the trial to finish on the second worker")
    finally:
        stop(second)
    assert doc["result"]["status"] == "ok" and doc["result"]["score"] == pytest.approx(steps / 100), doc["result"]
    err = (tmp_path / "art2" / "cmd" / "trial-00001" / "attempt-2" / "stderr.log").read_text()
    resumed_from = json.loads(err.splitlines()[0])
    assert resumed_from["resumed"] == "1" and k <= resumed_from["from"] < steps
    last = [p for p in doc["curve"] if p["lease"] == doc["curve"][-1]["lease"]]
    assert [p["step"] for p in last] == list(range(1, steps + 1))  # each step once
    assert {p["attempt"] for p in last} == {1, 2} and [p["attempt"] for p in last].count(2) < steps
