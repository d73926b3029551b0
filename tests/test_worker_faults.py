"""Faults inside a worker: its heartbeat thread dies; its process crashes under run-pool.sh."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from helpers import REPO, db_of, env, log_text, queue_trials, wait_for
from mongotune.store.studies import Study, StudyStore

pytestmark = [pytest.mark.timeout(300)]


def test_a_dead_heartbeat_thread_stops_the_trial_and_hands_it_back(mongo_url, tmp_path):
    from mongotune.pool.worker import Worker, WorkerConfig

    db = db_of(mongo_url)
    StudyStore(db).create(Study(name="hb", max_evals=1, lease_s=30.0,
                                objective={"kind": "synthetic", "sleep_s": 3.0, "record_dir": str(tmp_path / "runs")}))
    queue_trials(mongo_url, "hb", [{"x": 0.5}])
    worker = Worker(WorkerConfig(url=mongo_url, study="hb", heartbeat_s=0.2, artifacts=str(tmp_path / "art")))
    real = worker.trials.heartbeat
    broken = threading.Event()

    def heartbeat_that_breaks_once(lease, progress=None):  # a bug, not a database error
        if not broken.is_set():
            broken.set()
            raise RuntimeError("injected fault in the heartbeat thread")
        return real(lease, progress)

    worker.trials.heartbeat = heartbeat_that_breaks_once
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    try:
        doc = wait_for(lambda: (d := db.jobs.find_one({"exp_key": "mongotune:hb"})) and d["state"] == 2 and d, 60,
                       0.1, what="the trial to finish on its second run")
    finally:
        worker.request_stop()
        t.join(30)
    assert not t.is_alive() and worker.exit_reason == "stopped"
    assert doc["result"]["status"] == "ok"
    assert [r["reason"] for r in doc["requeues"]] == [
        "heartbeat thread died: RuntimeError: injected fault in the heartbeat thread"]
    assert doc["attempts"] == 0  # handed back at once, not expired
    assert len(list((tmp_path / "runs").iterdir())) == 1  # the first run stopped before its end


def _fake_bin(tmp_path):
    """``mongotune`` as run-pool.sh calls it, running this checkout."""
    path = tmp_path / "mongotune"
    path.write_text(f"#!/bin/sh\nexec {sys.executable} -m mongotune \"$@\"\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_run_pool_restarts_a_crashed_worker_and_stops_cleanly(mongo_url, tmp_path):
    db = db_of(mongo_url)
    e = env(MONGOTUNE_BIN=_fake_bin(tmp_path), MONGOTUNE_HOME=tmp_path / "home", PATH=os.environ["PATH"])
    pool = subprocess.Popen(["bash", str(REPO / "workers" / "run-pool.sh"), "--cpu-workers", "1", "--",
                             "--mongo", mongo_url], env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log = tmp_path / "home" / "logs" / "worker-cpu0.log"
    try:
        first = wait_for(lambda: db.workers.find_one({"status": {"$ne": "stopped"}}), 90, 0.2, what="a worker")
        os.kill(first["pid"], signal.SIGKILL)
        second = wait_for(lambda: db.workers.find_one({"pid": {"$ne": first["pid"]}, "status": {"$ne": "stopped"}}),
                          90, 0.2, what="the restarted worker")
        assert second["pid"] != first["pid"]
        assert "restarting in 5s" in log_text(log)
        pool.send_signal(signal.SIGTERM)
        assert pool.wait(60) == 0
        wait_for(lambda: db.workers.find_one({"_id": second["_id"]})["status"] == "stopped", 30, 0.2,
                 what="the worker to stop")
    finally:
        if pool.poll() is None:
            os.killpg(pool.pid, signal.SIGKILL)
            pool.wait()
    time.sleep(1.0)
    assert db.workers.count_documents({"status": {"$ne": "stopped"}, "pid": {"$ne": first["pid"]}}) == 0
