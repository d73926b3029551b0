"""Faults inside a worker: its heartbeat thread dies; its process crashes under run-pool.sh."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from helpers import REPO, db_of, env, log_text, mongotune, queue_trials, stop, wait_for
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


# ---------------------------------------------------------------- the spool: a kill at any point loses nothing
def _spool_worker(mongo_url, home, log, pause=None):
    extra = {"MONGOTUNE_HOME": home}
    if pause:
        extra["MONGOTUNE_TEST_SPOOL_PAUSE"] = pause  # the worker waits at this point of spooling, to be killed
    return mongotune("worker", "--mongo", mongo_url, "--study", "sp", log=log, extra_env=extra)


def _kill_when_paused(proc, spool, point, log):
    marker = spool / f"paused-{point}"
    wait_for(lambda: marker.exists() or proc.poll() is not None, 120, 0.1, what=f"the worker to reach {point}")
    assert marker.exists(), log_text(log)[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    marker.unlink()


@pytest.mark.parametrize("then", [None, "claimed", "delivered"])
def test_a_worker_killed_while_spooling_or_flushing_loses_no_result(mongo_url, tmp_path, then):
    """The first worker finishes its trial, spools the result and is killed before the database has it;
    ``then``: a second is killed while delivering it (after claiming the file; after the database took
    it, before deleting the file); the next worker delivers it, once."""
    db = db_of(mongo_url)
    StudyStore(db).create(Study(name="sp", max_evals=1, lease_s=300.0, objective={"kind": "synthetic", "sleep_s": 0.1}))
    queue_trials(mongo_url, "sp", [{"x": 0.25}])
    home, logs = tmp_path / "home", [tmp_path / f"w{i}.log" for i in range(3)]
    spool = home / "spool"
    _kill_when_paused(_spool_worker(mongo_url, home, logs[0], "spooled"), spool, "spooled", logs[0])
    (held,) = spool.glob("*.json")
    token = json.loads(held.read_text())["token"]
    assert db.jobs.find_one({"tid": 1})["state"] == 1  # the database has not got it
    if then:
        _kill_when_paused(_spool_worker(mongo_url, home, logs[1], then), spool, then, logs[1])
        assert [p.name for p in spool.glob("*.json")] == [held.name]  # still there, for the next worker
        assert db.jobs.find_one({"tid": 1})["state"] == (2 if then == "delivered" else 1)
    last = _spool_worker(mongo_url, home, logs[2])
    try:
        wait_for(lambda: not list(spool.glob("*.json")) and db.jobs.find_one({"tid": 1})["state"] == 2, 120, 0.1,
                 what="the spooled result to be delivered")
    finally:
        assert stop(last) == 0, log_text(logs[2])[-3000:]
    doc = db.jobs.find_one({"tid": 1})
    assert doc["result"]["status"] == "ok" and isinstance(doc["result"]["loss"], float)
    assert doc["finished_lease"] == token and doc["attempts"] == 0 and not doc.get("requeues")
    assert sorted(p.name for p in spool.iterdir()) == []  # nothing left, nothing half-written


def test_no_error_of_a_spooled_result_escapes_the_worker(mongo_url, tmp_path):
    """An unreadable file is set aside; one the server cannot take (a tid too big for BSON: the client
    refuses it) stays for a later flush; the worker runs on either way."""
    from mongotune.pool.worker import Worker, WorkerConfig

    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "mongotune_x-1-aaa.json").write_text("{half a file")
    poison = spool / "mongotune_x-2-bbb.json"
    poison.write_text(json.dumps({"exp_key": "mongotune:x", "tid": 2 ** 70, "token": "bbb", "attempt": 1,
                                  "result": {"status": "ok", "loss": 1.0}}))
    (spool / "mongotune_x-3-ccc.json").write_text(json.dumps({"exp_key": "mongotune:x", "tid": 3, "token": "c",
                                                              "attempt": 1e999, "result": {"loss": 1.0}}))
    worker = Worker(WorkerConfig(url=mongo_url, max_trials=0, spool_dir=str(spool), artifacts=str(tmp_path / "a")))
    assert worker.run() == "max-trials"
    assert sorted(p.name for p in spool.iterdir()) == ["mongotune_x-1-aaa.json.unreadable", poison.name,
                                                        "mongotune_x-3-ccc.json.unreadable"]


# ---------------------------------------------------------------- expiry after an outage
def test_an_outage_longer_than_the_lease_expires_no_live_trial(mongo_url, mongo_server, tmp_path):
    """Worker and reaper both lose the server for longer than the lease; the reaper is back first and
    sees the trial's heartbeat far too old. It waits a lease before judging, the worker's heartbeat lands
    meanwhile, and the trial stays with it. Once the worker is really gone, the reaper requeues it."""
    if not hasattr(mongo_server, "port"):
        pytest.skip("OUTAGE TEST NOT RUN: needs the embedded server's host and port (MONGOTUNE_TEST_MONGO is set)")
    import pymongo

    from faultproxy import FaultProxy
    from mongotune.store.trialdoc import TrialStore

    lease = 6.0
    db = db_of(mongo_url)
    StudyStore(db).create(Study(name="out", max_evals=1, lease_s=lease, objective={"kind": "synthetic", "sleep_s": 120}))
    queue_trials(mongo_url, "out", [{"x": 0.5}])
    db_name = mongo_url.rsplit("/", 1)[1].split("?")[0]
    to_worker, to_reaper = (FaultProxy(mongo_server.host, mongo_server.port) for _ in range(2))
    log = tmp_path / "w.log"
    worker = mongotune("worker", "--mongo", to_worker.url(db_name), "--study", "out", log=log)
    client = pymongo.MongoClient(to_reaper.url(db_name), serverSelectionTimeoutMS=500)
    reaper, expired, done = TrialStore(client.get_default_database()), [], threading.Event()

    def reap():  # as a coordinator or another worker does, ten times a second
        while not done.is_set():
            try:
                expired.extend(reaper.expire({"mongotune:out": (lease, 3)}))
            except pymongo.errors.PyMongoError:
                pass
            done.wait(0.1)

    th = threading.Thread(target=reap, daemon=True)
    try:
        wait_for(lambda: (db.jobs.find_one({"tid": 1}) or {}).get("state") == 1, 120, 0.1, what="the trial to run")
        th.start()
        time.sleep(1.0)
        to_worker.blackout()
        to_reaper.blackout()
        time.sleep(lease + 3)  # every heartbeat is now older than the lease
        to_reaper.restore()
        time.sleep(1.0)
        to_worker.restore()  # the worker is back a second after the reaper
        time.sleep(lease + 2)
        assert expired == [], log_text(log)[-2000:]
        doc = db.jobs.find_one({"tid": 1})
        assert doc["state"] == 1 and doc["attempts"] == 0 and not doc.get("lease_expiries")
        worker.send_signal(signal.SIGKILL)  # now it is gone for real: one lease later it is requeued
        worker.wait(30)
        wait_for(lambda: expired, lease + 30, 0.2, what="the reaper to requeue the dead worker's trial")
        assert expired == [(1, "requeued")]
    finally:
        done.set()
        if th.is_alive():
            th.join(10)
        stop(worker)
        client.close()
        to_worker.close()
        to_reaper.close()
