"""The worker pool with real processes: leases, requeue, shutdown, restarts.

These use the ``synthetic`` objective (no TensorFlow) so that timing is
controlled; ``test_e2e_keras.py`` runs the same machinery with real training.
"""

from __future__ import annotations

import collections
import signal
import threading
import time
from pathlib import Path

import pytest
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_NEW, JOB_STATE_RUNNING

from mongotune.pool.coordinator import Coordinator
from mongotune.search.algorithms import DEFAULT
from mongotune.store.studies import Study

from helpers import db_of, log_text, mongotune, run_cli, stop, wait_for

pytestmark = pytest.mark.timeout(300)


def _study(name, max_evals, **options):
    lease = options.pop("lease_s", 60.0)
    algo = options.pop("algo", DEFAULT)
    return Study(name=name, max_evals=max_evals, objective={"kind": "synthetic", **options}, lease_s=lease,
                 search={"algo": algo})


def _q(name, **extra):
    return {"exp_key": f"mongotune:{name}", **extra}


def _runs_per_tid(record_dir: Path) -> collections.Counter:
    return collections.Counter(p.name.split("-")[0] for p in record_dir.iterdir()) if record_dir.exists() else {}


def _docs(db, name):
    return list(db.jobs.find({"exp_key": f"mongotune:{name}"}).sort("tid", 1))


def test_two_workers_run_every_trial_once_and_record_failures(mongo_url, tmp_path):
    rec = tmp_path / "runs"
    coord = Coordinator(mongo_url)
    coord.create(_study("s1", 10, sleep_s=0.1, raise_on_tids=[3], nan_on_tids=[5], record_dir=str(rec)))
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    workers = [mongotune("worker", "--mongo", mongo_url, "--study", "s1", log=logs[i]) for i in range(2)]
    try:
        snap = coord.run("s1")
    finally:
        codes = [stop(w) for w in workers]
    assert codes == [0, 0], [log_text(p)[-2000:] for p in logs]
    docs = _docs(db_of(mongo_url), "s1")
    assert [d["tid"] for d in docs] == sorted({d["tid"] for d in docs}) and len(docs) == 10
    assert all(d["state"] == JOB_STATE_DONE for d in docs)
    by_tid = {d["tid"]: d for d in docs}
    assert by_tid[3]["result"]["status"] == "fail"
    assert by_tid[3]["result"]["failure"]["kind"] == "exception"
    assert "synthetic failure requested for trial 3" in by_tid[3]["result"]["failure"]["reason"]
    assert "Traceback" in by_tid[3]["result"]["failure"]["traceback"]
    assert by_tid[5]["result"]["status"] == "fail" and by_tid[5]["result"]["failure"]["kind"] == "nan"
    ok = [d for d in docs if d["result"]["status"] == "ok"]
    assert len(ok) == 8 and all(isinstance(d["result"]["loss"], float) for d in ok)
    assert snap.counts == {"queued": 0, "running": 0, "ok": 8, "failed": 2, "pruned": 0, "error": 0}
    # both workers took part, and every trial ran exactly once (failed ones never finished)
    assert len({d["worker"]["pid"] for d in docs}) == 2
    runs = _runs_per_tid(rec)
    assert set(runs.values()) == {1} and len(runs) == 9  # 10 trials less the one that raised
    study = coord.studies.get("s1")
    assert study.status == "done" and study.best["loss"] == snap.best_loss


# x in [-1, 1] on one branch, x and a nested choice on the other: every algorithm on a conditional space
CONDITIONAL_SPACE = {"x": {"hp": "uniform", "low": -1.0, "high": 1.0},
                     "arch": {"hp": "choice", "options": [
                         {"kind": "plain"},
                         {"kind": "deep", "depth": {"hp": "quniform", "low": 1, "high": 4, "q": 1, "int": True},
                          "act": {"hp": "choice", "options": ["relu", "tanh"]}}]}}


@pytest.mark.parametrize("algo", ["optuna-tpe", "optuna-tpe-startup2", "optuna-tpe-conditional", "tpe",
                                  "tpe-startup2", "tpe-conditional", "rand", "anneal", "gp", "gp-conditional"])
def test_each_algorithm_with_a_queue_of_several(mongo_url, tmp_path, algo):
    coord = Coordinator(mongo_url)
    name = algo.removesuffix("-startup2").removesuffix("-conditional")
    study = _study(f"alg-{algo}", 8, sleep_s=0.05, algo=name)
    if algo.endswith("-startup2"):
        study.search["startup_trials"] = 2  # the model itself (not its random start) suggests trials 3..8
    if algo.endswith("-conditional"):
        study.space = CONDITIONAL_SPACE
    coord.create(study)
    workers = [mongotune("worker", "--mongo", mongo_url, "--study", f"alg-{algo}", log=tmp_path / f"w{i}.log")
               for i in range(2)]
    try:
        wait_for(lambda: len(coord.db.workers.distinct("pid", {"status": {"$ne": "stopped"}})) >= 2, 60,
                 what="two workers")  # so that the queue holds several trials at once
        snap = coord.run(f"alg-{algo}")
    finally:
        assert [stop(w) for w in workers] == [0, 0]
    assert snap.counts["ok"] == 8 and snap.best_loss is not None
    docs = _docs(db_of(mongo_url), f"alg-{algo}")
    assert len({d["params"]["x"] for d in docs}) == 8
    if algo.endswith("-conditional"):  # each trial holds exactly the dimensions of its own branch
        for d in docs:
            vals = d["misc"]["vals"]
            deep = vals["arch"] == [1]
            assert len(vals["arch[1].depth"]) == len(vals["arch[1].act"]) == int(deep), vals
            assert set(d["params"]["arch"]) == ({"kind", "depth", "act"} if deep else {"kind"})


def test_grid_with_four_workers_runs_every_point_once_and_ends(mongo_url, tmp_path):
    rec = tmp_path / "runs"
    coord = Coordinator(mongo_url)
    study = _study("grid", 20, sleep_s=0.3, record_dir=str(rec), algo="grid")
    study.space = {"opt": {"hp": "choice", "options": ["adam", "sgd", "rmsprop"]},
                   "layers": {"hp": "quniform", "low": 1, "high": 2, "q": 1, "int": True}}
    coord.create(study)
    workers = [mongotune("worker", "--mongo", mongo_url, "--study", "grid", log=tmp_path / f"w{i}.log")
               for i in range(4)]
    try:
        wait_for(lambda: len(coord.db.workers.distinct("pid", {"status": {"$ne": "stopped"}})) >= 4, 90,
                 what="four workers")
        snap = coord.run("grid")
    finally:
        assert [stop(w) for w in workers] == [0, 0, 0, 0]
    docs = _docs(db_of(mongo_url), "grid")
    assert len(docs) == 6 and [d["tid"] for d in docs] == list(range(6)) and all(d["state"] == JOB_STATE_DONE for d in docs)
    points = {(d["params"]["opt"], d["params"]["layers"]) for d in docs}
    assert points == {(o, n) for o in ("adam", "sgd", "rmsprop") for n in (1, 2)}
    assert set(_runs_per_tid(rec).values()) == {1} and len(_runs_per_tid(rec)) == 6
    assert snap.finished == 6 and coord.studies.get("grid").status == "done"  # exhausted, not interrupted


def test_killed_worker_trial_is_requeued_after_lease(mongo_url, tmp_path):
    rec = tmp_path / "runs"
    coord = Coordinator(mongo_url)
    coord.create(_study("s2", 4, sleep_s=1.5, lease_s=2.0, record_dir=str(rec), algo="rand"))
    done = {}
    t = threading.Thread(target=lambda: done.setdefault("snap", coord.run("s2")))
    t.start()
    db = db_of(mongo_url)
    victim = mongotune("worker", "--mongo", mongo_url, "--study", "s2", log=tmp_path / "victim.log")
    running = wait_for(lambda: db.jobs.find_one(_q("s2", state=JOB_STATE_RUNNING)), 60, what="a running trial")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    survivor = mongotune("worker", "--mongo", mongo_url, "--study", "s2", log=tmp_path / "survivor.log")
    t.join(120)
    assert not t.is_alive(), "coordinator did not finish"
    assert stop(survivor) == 0
    docs = _docs(db, "s2")
    assert len(docs) == 4 and all(d["state"] == JOB_STATE_DONE and d["result"]["status"] == "ok" for d in docs)
    killed = next(d for d in docs if d["tid"] == running["tid"])
    assert killed["attempts"] == 1 and len(killed["lease_expiries"]) == 1
    assert killed["worker"]["pid"] == survivor.pid
    assert set(_runs_per_tid(rec).values()) == {1} and len(_runs_per_tid(rec)) == 4


def test_sigterm_hands_trial_back_at_once(mongo_url, tmp_path):
    coord = Coordinator(mongo_url)
    coord.create(_study("s3", 1, sleep_s=30.0, algo="rand"))
    t = threading.Thread(target=coord.run, args=("s3",), kwargs={"stop": (stop_ev := threading.Event())})
    t.start()
    db = db_of(mongo_url)
    w = mongotune("worker", "--mongo", mongo_url, "--study", "s3", log=tmp_path / "w.log")
    try:
        wait_for(lambda: db.jobs.find_one(_q("s3", state=JOB_STATE_RUNNING)), 60, what="running trial")
        t0 = time.monotonic()
        w.send_signal(signal.SIGTERM)
        code = w.wait(20)
        elapsed = time.monotonic() - t0
        doc = db.jobs.find_one(_q("s3"))
        assert code == 0, log_text(tmp_path / "w.log")[-2000:]
        assert doc["state"] == JOB_STATE_NEW and doc["owner"] is None
        assert doc["requeues"][0]["reason"] == "worker shutdown"
        assert elapsed < 15  # at once, not after the 30 s trial or a 60 s lease
        assert "handed back" in log_text(tmp_path / "w.log")
    finally:
        stop_ev.set()
        stop(w, signal.SIGKILL)
        t.join(30)
    assert not t.is_alive(), "a stop request must end the coordinator even with trials still queued"


def test_idle_worker_stays_and_late_worker_joins(mongo_url, tmp_path):
    db = db_of(mongo_url)
    early = mongotune("worker", "--mongo", mongo_url, log=tmp_path / "early.log")
    try:
        wait_for(lambda: db.workers.find_one({"pid": early.pid}), 30, what="worker registration")
        time.sleep(3.0)  # longer than the poll/backoff cycle: hyperopt's worker would have given up by now
        assert early.poll() is None
        coord = Coordinator(mongo_url)
        coord.create(_study("s4", 10, sleep_s=1.0, algo="rand"))
        t = threading.Thread(target=coord.run, args=("s4",))
        t.start()
        wait_for(lambda: db.jobs.count_documents(_q("s4", state=JOB_STATE_DONE)) >= 1, 60, what="first trial")
        late = mongotune("worker", "--mongo", mongo_url, "--study", "s4", log=tmp_path / "late.log")
        listing = wait_for(lambda: (r := run_cli("workers", "--mongo", mongo_url)) and str(late.pid) in r.stdout and r,
                           60, interval=0.5, what="late worker listed")
        assert str(early.pid) in listing.stdout
        t.join(120)
        assert not t.is_alive()
        pids = {d["worker"]["pid"] for d in _docs(db, "s4")}
        assert late.pid in pids and early.pid in pids
        assert stop(late) == 0
    finally:
        assert stop(early) == 0


def test_resume_after_killed_coordinator_runs_nothing_twice(mongo_url, tmp_path):
    rec = tmp_path / "runs"
    opts = f'{{"sleep_s": 0.4, "record_dir": "{rec}"}}'
    w = mongotune("worker", "--mongo", mongo_url, log=tmp_path / "w.log")
    coord = mongotune("launch", "x", "--study", "s5", "--objective", "synthetic", "--options", opts,
                      "--max-evals", 8, "--mongo", mongo_url, "-q", log=tmp_path / "coord.log")
    db = db_of(mongo_url)
    try:
        wait_for(lambda: db.jobs.count_documents(_q("s5", state=JOB_STATE_DONE)) >= 3, 120,
                 what="three finished trials")
        coord.send_signal(signal.SIGKILL)
        coord.wait()
        assert db.studies.find_one({"_id": "s5"})["status"] == "running"  # it never got to say otherwise
        r = run_cli("resume", "s5", "--mongo", mongo_url, "-q", timeout=240)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "8/8 trials finished" in r.stdout
    finally:
        stop(w)
    docs = _docs(db, "s5")
    assert len(docs) == 8 and all(d["state"] == JOB_STATE_DONE for d in docs)
    assert sorted(d["tid"] for d in docs) == sorted({d["tid"] for d in docs})
    runs = _runs_per_tid(rec)
    assert len(runs) == 8 and set(runs.values()) == {1}
    assert db.studies.find_one({"_id": "s5"})["status"] == "done"


def test_server_killed_and_restarted_mid_study(tmp_path):
    from mongotune.store.embedded import free_port, start_server

    rec = tmp_path / "runs"
    dbpath = tmp_path / "db"
    port = free_port()
    server = start_server(dbpath, port=port)
    url = f"mongodb://127.0.0.1:{port}/restart"
    opts = f'{{"sleep_s": 0.5, "record_dir": "{rec}"}}'
    w = mongotune("worker", "--mongo", url, log=tmp_path / "w.log")
    coord = mongotune("launch", "x", "--study", "s6", "--objective", "synthetic", "--options", opts,
                      "--max-evals", 10, "--mongo", url, "-q", log=tmp_path / "coord.log")
    try:
        db = db_of(url)
        wait_for(lambda: db.jobs.count_documents(_q("s6", state=JOB_STATE_DONE)) >= 3, 120,
                 what="three finished trials")
        db.client.close()
        server.kill()  # kill -9 of the database server
        time.sleep(7.0)  # longer than pymongo's own 5 s server selection: our retries must carry it
        server = start_server(dbpath, port=port)
        assert coord.wait(180) == 0, log_text(tmp_path / "coord.log")[-3000:]
        db = db_of(url)
        docs = _docs(db, "s6")
        assert len(docs) == 10 and all(d["state"] == JOB_STATE_DONE and d["result"]["status"] == "ok" for d in docs)
        runs = _runs_per_tid(rec)
        assert len(runs) == 10 and set(runs.values()) == {1}
        assert "unreachable" in log_text(tmp_path / "coord.log") + log_text(tmp_path / "w.log")
    finally:
        stop(w)
        stop(coord, signal.SIGKILL)
        server.stop()


def test_late_result_from_a_frozen_worker_is_dropped(mongo_url, tmp_path):
    """A worker frozen (SIGSTOP) past its lease loses the trial; when it wakes, its result is discarded."""
    rec = tmp_path / "runs"
    coord = Coordinator(mongo_url)
    coord.create(_study("s7", 1, sleep_s=4.0, lease_s=3.0, record_dir=str(rec), algo="rand"))
    t = threading.Thread(target=coord.run, args=("s7",))
    t.start()
    db = db_of(mongo_url)
    frozen = mongotune("worker", "--mongo", mongo_url, "--study", "s7", log=tmp_path / "frozen.log")
    survivor = None
    try:
        first = wait_for(lambda: db.jobs.find_one(_q("s7", state=JOB_STATE_RUNNING)), 60, what="running")
        frozen.send_signal(signal.SIGSTOP)
        survivor = mongotune("worker", "--mongo", mongo_url, "--study", "s7", log=tmp_path / "survivor.log")
        t.join(120)
        assert not t.is_alive()
        before = db.jobs.find_one(_q("s7"))
        frozen.send_signal(signal.SIGCONT)  # wakes with a stale lease and a trial it no longer owns
        wait_for(lambda: "result discarded" in log_text(tmp_path / "frozen.log"), 30,
                 what="the frozen worker discarding its stale result")
        doc = db.jobs.find_one(_q("s7"))
        assert doc["state"] == JOB_STATE_DONE and doc["result"]["status"] == "ok"
        assert doc["worker"]["pid"] == survivor.pid and doc["attempts"] == 1
        assert doc["lease_token"] is None and doc["lease_expiries"][0]["owner"] == first["owner"]
        # the frozen evaluation may have run to its end after SIGCONT, but what it
        # reported went nowhere: the trial document did not change at all
        assert doc == before
        assert _runs_per_tid(rec)["tid0"] in (1, 2)
        assert frozen.poll() is None  # and the frozen worker stays in the pool
    finally:
        frozen.send_signal(signal.SIGCONT)
        assert stop(frozen) == 0
        if survivor:
            assert stop(survivor) == 0


def test_operator_requeue(mongo_url, tmp_path):
    coord = Coordinator(mongo_url)
    coord.create(_study("s8", 1, sleep_s=30.0, algo="rand"))
    ev = threading.Event()
    t = threading.Thread(target=coord.run, args=("s8",), kwargs={"stop": ev})
    t.start()
    db = db_of(mongo_url)
    w = mongotune("worker", "--mongo", mongo_url, "--study", "s8", log=tmp_path / "w.log")
    try:
        doc = wait_for(lambda: db.jobs.find_one(_q("s8", state=JOB_STATE_RUNNING)), 60, what="running")
        w.send_signal(signal.SIGSTOP)
        r = run_cli("requeue", "s8", "--tid", doc["tid"], "--mongo", mongo_url)
        assert r.returncode == 0 and f"[{doc['tid']}]" in r.stdout, r.stdout + r.stderr
        after = db.jobs.find_one({"_id": doc["_id"]})
        assert after["state"] == JOB_STATE_NEW and after["requeues"][-1]["reason"] == "operator"
        bad = run_cli("requeue", "s8", "--tid", 999, "--mongo", mongo_url)
        assert bad.returncode == 2 and "no running or errored trial 999" in bad.stderr
    finally:
        ev.set()
        w.send_signal(signal.SIGCONT)
        stop(w, signal.SIGKILL)
        t.join(30)
    assert not t.is_alive(), "a stop request must end the coordinator even with trials still queued"
    assert coord.studies.get("s8").status == "interrupted"
