"""Artifact stores and preemption: what GridFS costs on the embedded server, and what checkpoints save.

``throughput``: put/get of 1, 10 and 100 MB objects (random bytes) through
``store.artifacts`` on the embedded server (mongoeco over SQLite, its own
process, as ``mongotune`` starts it): GridFS and the directory store.

``preemption``: a Keras digits trial of ``--epochs`` epochs (baseline model,
fixed params, patience = epochs) on a real worker process, killed with
SIGKILL once its curve reaches ``--kill-at`` epochs; a second worker (another
HOME and artifact root) finishes it.  With checkpoints (GridFS store) and
without (``Training.checkpoints`` off).  Reported: epochs trained in all,
epochs lost (trained minus the budget), the second attempt's wall time.

    .venv/bin/python bench/bench_artifacts.py throughput
    .venv/bin/python bench/bench_artifacts.py preemption --epochs 20 --kill-at 10
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["MONGOTUNE_TEST_OBJECTIVES"] = "1"


def throughput(sizes_mb=(1, 10, 100)) -> list[dict]:
    import pymongo

    from mongotune.store.artifacts import DirectoryStore, GridFSStore
    from mongotune.store.embedded import start_server

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp) / "db", port=0)
        try:
            db = pymongo.MongoClient(f"mongodb://{server.host}:{server.port}/bench").bench
            stores = {"gridfs": GridFSStore(db, "b"), "local": DirectoryStore(Path(tmp) / "root", "b")}
            for mb in sizes_mb:
                src = Path(tmp) / f"src-{mb}"
                src.write_bytes(os.urandom(mb << 20))
                for name, store in stores.items():
                    t0 = time.perf_counter()
                    store.put(f"obj-{mb}", src)
                    t1 = time.perf_counter()
                    store.get(f"obj-{mb}", Path(tmp) / "out")
                    t2 = time.perf_counter()
                    rows.append({"store": name, "mb": mb, "write_s": round(t1 - t0, 2), "read_s": round(t2 - t1, 2),
                                 "write_mb_s": round(mb / (t1 - t0), 1), "read_mb_s": round(mb / (t2 - t1), 1)})
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            server.stop()
    return rows


def _preempted_trial(url: str, name: str, work: Path, epochs: int, kill_at: int, checkpoints: bool) -> dict:
    from helpers import db_of, mongotune, queue_trials, stop, wait_for
    from mongotune.data import DataSpec
    from mongotune.objectives.keras_launch import keras_objective
    from mongotune.objectives.keras_trial import Training
    from mongotune.store.studies import Study, StudyStore
    from test_resume import PARAMS

    training = Training(epochs=epochs, patience=epochs, xla="off", tensorboard=False, checkpoints=checkpoints)
    db = db_of(url)
    StudyStore(db).create(Study(name=name, max_evals=1, objective=keras_objective("baseline", DataSpec("digits"),
                                                                                  training),
                                lease_s=4.0, metric={"name": "val_accuracy", "goal": "max"}, artifact_store="gridfs"))
    queue_trials(url, name, [PARAMS])

    def worker(i):
        home = work / f"{name}-home{i}"
        return mongotune("worker", "--mongo", url, "--study", name, "--gpu", "none", "--artifacts",
                         work / f"{name}-art{i}", log=work / f"{name}-w{i}.log",
                         extra_env={"MONGOTUNE_HOME": home, "HOME": home})

    t0 = time.monotonic()
    first = worker(1)
    wait_for(lambda: len((db.jobs.find_one({"exp_key": f"mongotune:{name}"}) or {}).get("curve") or []) >= kill_at,
             600, 0.02, what="the kill point")
    first.send_signal(signal.SIGKILL)
    first.wait()
    t_kill = time.monotonic()
    second = worker(2)
    doc = wait_for(lambda: (d := db.jobs.find_one({"exp_key": f"mongotune:{name}"})) and d["state"] == 2 and d,
                   900, 0.1, what="the trial to finish")
    t_done = time.monotonic()
    stop(second)
    trained = len(doc["curve"])  # every epoch of every attempt is a point (the resumed run carries its own)
    second_epochs = sum(1 for p in doc["curve"] if p["attempt"] == 2)
    return {"checkpoints": checkpoints, "epochs": epochs, "killed_after": trained - second_epochs,
            "second_attempt_epochs": second_epochs, "epochs_trained": trained, "epochs_lost": trained - epochs,
            "resumed_from": doc["result"].get("resumed_from_epoch"), "first_attempt_s": round(t_kill - t0, 1),
            "after_kill_s": round(t_done - t_kill, 1), "val_accuracy": round(doc["result"]["val_accuracy"], 4)}


def preemption(epochs: int, kill_at: int) -> list[dict]:
    from mongotune.store.embedded import start_server

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp) / "db", port=0)
        try:
            for checkpoints in (False, True):
                url = f"mongodb://{server.host}:{server.port}/pre{int(checkpoints)}"
                rows.append(_preempted_trial(url, f"p{int(checkpoints)}", Path(tmp), epochs, kill_at, checkpoints))
                print(json.dumps(rows[-1]), flush=True)
        finally:
            server.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["throughput", "preemption"])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--kill-at", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    rows = throughput() if a.what == "throughput" else preemption(a.epochs, a.kill_at)
    if a.out:
        a.out.write_text(json.dumps({"what": a.what, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
