"""The one lease loop (``pool.lease.LeaseWorker``), driven by both kinds of worker on the real server.

``mongotune worker`` (``Worker``: a mongotune study's trial) and ``mongotune
hyperopt-worker`` (``HyperoptWorker``: a stock ``fmin`` job) run in this process
against the embedded server, through the fault proxy where a reply must go
missing.  Each must: register the same registry document, keep its lease alive
past the lease's length while a reaper watches, find a reservation whose reply
was lost by its token, reap the expired leases of what it serves (and only
those), and leave with its reason.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

import cloudpickle
import numpy as np
import pytest
from hyperopt import fmin, hp, rand

from faultproxy import FaultProxy, is_reservation
from helpers import db_of, queue_trials, wait_for
from mongotune.store import MongoTrials
from mongotune.store.studies import Study, StudyStore
from mongotune.store.trialdoc import DONE, RUNNING, TrialStore

pytestmark = pytest.mark.timeout(300)

cloudpickle.register_pickle_by_value(sys.modules[__name__])

LEASE_S = 1.0
RUN_S = 2.5  # each trial runs longer than its lease: only its heartbeats keep it
#: what the views read of a registry document (``store.workers``), the same for both kinds
REGISTRY_FIELDS = {"_id", "host", "pid", "gpu", "kind", "study", "exp_key", "status", "current", "trials_done",
                   "heartbeat", "started", "stopped", "exit"}


def _slow_job(x):
    time.sleep(RUN_S)
    return {"status": "ok", "loss": x ** 2}


def _jobs_url(url: str) -> str:
    base, _, query = url.partition("?")
    return base + "/jobs" + ("?" + query if query else "")


class Kind:
    """One kind of worker: queues one trial it serves, builds the worker, names its trials' exp_key."""

    def __init__(self, name: str, mongo_url: str, tmp_path):
        self.name, self.mongo_url, self.tmp_path = name, mongo_url, tmp_path
        self.exp_key = "mongotune:lease" if name == "mongotune" else "e"
        self.fmin: threading.Thread | None = None

    def queue(self) -> None:
        if self.name == "mongotune":
            StudyStore(db_of(self.mongo_url)).create(Study(
                name="lease", max_evals=1, lease_s=LEASE_S, objective={"kind": "synthetic", "sleep_s": RUN_S}))
            queue_trials(self.mongo_url, "lease", [{"x": 0.5}])
            return
        trials = MongoTrials(_jobs_url(self.mongo_url), exp_key="e")
        self.fmin = threading.Thread(target=fmin, args=(_slow_job, hp.uniform("x", -1, 1)), daemon=True,
                                     kwargs=dict(algo=rand.suggest, max_evals=1, trials=trials,
                                                 show_progressbar=False, rstate=np.random.default_rng(3)))
        self.fmin.start()
        wait_for(lambda: db_of(self.mongo_url).jobs.find_one({"exp_key": "e"}), 60, 0.1, what="fmin's job")

    def worker(self, url: str):
        if self.name == "mongotune":
            from mongotune.pool.worker import Worker, WorkerConfig

            return Worker(WorkerConfig(url=url, study="lease", max_trials=1, reap_every_s=0.2,
                                       artifacts=str(self.tmp_path / "art"), spool_dir=str(self.tmp_path / "spool")))
        from mongotune.pool.hyperopt_worker import HyperoptWorker, HyperoptWorkerConfig

        return HyperoptWorker(HyperoptWorkerConfig(mongo=url, exp_key="e", allow_pickle=True, max_jobs=1,
                                                   lease_s=LEASE_S, reap_every_s=0.2, poll_interval=0.1,
                                                   workdir=str(self.tmp_path / "wd")))

    @property
    def limit(self) -> str:
        return "max-trials" if self.name == "mongotune" else "max-jobs"

    def close(self) -> None:
        if self.fmin is not None:
            self.fmin.join(60)


@pytest.fixture(params=["mongotune", "hyperopt"])
def kind(request, mongo_url, tmp_path):
    k = Kind(request.param, mongo_url, tmp_path)
    yield k
    k.close()


def _run(worker) -> threading.Thread:
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    return t


def _reaper(url: str, exp_key: str, expired: list, done: threading.Event) -> threading.Thread:
    """Another process's reaper, as strict as it may be: the kind's lease, checked ten times a second."""
    store = TrialStore(db_of(url))

    def reap():
        while not done.is_set():
            expired.extend(store.expire({exp_key: (LEASE_S, 3)}))
            done.wait(0.1)

    t = threading.Thread(target=reap, daemon=True)
    t.start()
    return t


def test_each_kind_recovers_a_lost_reservation_and_keeps_its_lease(kind, mongo_url, mongo_server, caplog):
    if not hasattr(mongo_server, "port"):
        pytest.skip("LEASE LOOP TEST NOT RUN: needs the embedded server's host and port (MONGOTUNE_TEST_MONGO is set)")
    caplog.set_level(logging.INFO, logger="mongotune")
    kind.queue()
    proxy = FaultProxy(mongo_server.host, mongo_server.port)
    db_name = mongo_url.rsplit("/", 1)[1].split("?")[0]
    proxy.lose_reply_of(is_reservation)  # the server takes the reservation; the worker never hears of it
    worker = kind.worker(proxy.url(db_name))
    expired, done = [], threading.Event()
    reaper = _reaper(mongo_url, kind.exp_key, expired, done)
    t = _run(worker)
    db = db_of(mongo_url)
    try:
        running = wait_for(lambda: db.workers.find_one({"_id": worker.id, "status": "running"}), 60, 0.05,
                           what="the worker's registry document to show its trial")
        assert running["current"]["exp_key"] == kind.exp_key and running["current"]["tid"] is not None
        t.join(60)
    finally:
        done.set()
        reaper.join(10)
        if t.is_alive():
            worker.request_stop()
            t.join(30)
        proxy.close()
    assert worker.exit_reason == kind.limit and worker.trials_done == 1
    assert len(proxy.lost_replies) == 1
    assert "found the reservation whose reply was lost" in caplog.text
    (doc,) = list(db.jobs.find({"exp_key": kind.exp_key}))
    assert doc["state"] == DONE and doc["result"]["status"] == "ok"
    assert doc["worker"]["id"] == worker.id and not doc.get("attempts") and not doc.get("lease_expiries")
    assert expired == []  # a trial twice as long as its lease, kept by its heartbeats
    reg = db.workers.find_one({"_id": worker.id})
    assert REGISTRY_FIELDS <= set(reg), REGISTRY_FIELDS - set(reg)
    assert (reg["kind"], reg["status"], reg["exit"], reg["current"]) == (kind.name, "stopped", kind.limit, None)


def test_each_kind_reaps_the_leases_it_serves_and_only_those(kind, mongo_url, tmp_path):
    """A dead worker of each kind left a trial running; a live worker of one kind requeues its own kind's
    trial once the lease is over and runs it, and leaves the other kind's alone."""
    other = Kind("hyperopt" if kind.name == "mongotune" else "mongotune", mongo_url, tmp_path / "other")
    try:
        for k in (kind, other):
            k.queue()
        store = TrialStore(db_of(mongo_url))
        dead = {"id": "gone:1:dead00", "host": "gone", "pid": 1, "gpu": None}
        held = {k.exp_key: store.reserve(dead, [k.exp_key]) for k in (kind, other)}
        assert all(held.values())
        time.sleep(LEASE_S + 0.5)  # both leases are over
        worker = kind.worker(mongo_url)
        assert worker.run() == kind.limit
        db = db_of(mongo_url)
        mine = db.jobs.find_one({"exp_key": kind.exp_key})
        assert mine["state"] == DONE and mine["worker"]["id"] == worker.id and mine["attempts"] == 1
        assert [e["owner"] for e in mine["lease_expiries"]] == [dead["id"]]
        theirs = db.jobs.find_one({"exp_key": other.exp_key})
        assert theirs["state"] == RUNNING and theirs["lease_token"] == held[other.exp_key].token
        assert not theirs.get("lease_expiries")
        store.expire({other.exp_key: (LEASE_S, 3)})  # let the other kind's fmin end
        store.finish(store.reserve(dead, [other.exp_key]), {"status": "ok", "loss": 0.0})
    finally:
        other.close()


def test_both_kinds_leave_after_their_idle_time_with_their_reason(mongo_url, tmp_path):
    from mongotune.pool.hyperopt_worker import HyperoptWorker, HyperoptWorkerConfig
    from mongotune.pool.worker import Worker, WorkerConfig

    mongotune = Worker(WorkerConfig(url=mongo_url, idle_timeout=0.5, artifacts=str(tmp_path / "art"),
                                    spool_dir=str(tmp_path / "spool")))
    hyperopt = HyperoptWorker(HyperoptWorkerConfig(mongo=mongo_url, allow_pickle=True, reserve_timeout=0.5,
                                                   poll_interval=0.1))
    assert (mongotune.run(), hyperopt.run()) == ("idle-timeout", "reserve-timeout")
    db = db_of(mongo_url)
    docs = {d["kind"]: d for d in db.workers.find()}
    assert {k: (d["status"], d["exit"]) for k, d in docs.items()} == {
        "mongotune": ("stopped", "idle-timeout"), "hyperopt": ("stopped", "reserve-timeout")}
    assert docs["hyperopt"]["exp_key"] == "(hyperopt)" and docs["mongotune"]["exp_key"] is None
