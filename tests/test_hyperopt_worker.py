"""`mongotune hyperopt-worker`: stock hyperopt.fmin + mongotune.store.MongoTrials, run by real worker processes."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import cloudpickle
import numpy as np
import pytest
from hyperopt import fmin, hp, rand

from helpers import db_of, log_text, mongotune, run_cli, stop, wait_for
from mongotune.store import MongoTrials

pytestmark = pytest.mark.timeout(300)

# fmin cloudpickles the objective into the database; the workers cannot import this test module,
# so its functions travel by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def rendezvous_objective(folder: str):
    """Each evaluation waits until two different processes have run one: both workers must take part."""

    def objective(x):
        os.makedirs(folder, exist_ok=True)
        open(os.path.join(folder, str(os.getpid())), "w").close()
        end = time.time() + 60
        while len(os.listdir(folder)) < 2 and time.time() < end:
            time.sleep(0.05)
        return {"status": "ok", "loss": (x - 0.25) ** 2, "pid": os.getpid(), "cwd": os.getcwd()}

    return objective


def once_slow_objective(marker: str):
    """The first evaluation hangs (until it is killed or stopped); later ones return at once."""

    def objective(x):
        if not os.path.exists(marker):
            open(marker, "w").write(str(os.getpid()))
            time.sleep(300)
        return {"status": "ok", "loss": x ** 2, "pid": os.getpid()}

    return objective


def worker(mongo_url, tmp_path, name, *extra):
    cwd = tmp_path / "cwd"  # without --workdir, each job gets a directory here
    cwd.mkdir(exist_ok=True)
    return mongotune("hyperopt-worker", "--mongo", mongo_url, "--exp-key", "e", "--allow-pickle",
                     "--poll-interval", "0.2", "--reserve-timeout", "120", *extra, log=tmp_path / f"{name}.log",
                     cwd=cwd)


def jobs_url(mongo_url):
    base, _, query = mongo_url.partition("?")
    return base + "/jobs" + ("?" + query if query else "")


def test_stock_fmin_finishes_with_two_hyperopt_workers(mongo_url, tmp_path):
    procs = [worker(mongo_url, tmp_path, f"w{i}", "--workdir", str(tmp_path / "wd"), "--gpu", "none")
             for i in range(2)]
    try:
        trials = MongoTrials(jobs_url(mongo_url), exp_key="e")
        best = fmin(rendezvous_objective(str(tmp_path / "met")), hp.uniform("x", -1, 1), algo=rand.suggest,
                    max_evals=8, trials=trials, max_queue_len=2, show_progressbar=False,
                    rstate=np.random.default_rng(0))
        results = [t["result"] for t in trials.trials]
        assert len(results) == 8 and all(r["status"] == "ok" for r in results)
        assert {r["pid"] for r in results} == {p.pid for p in procs}  # both workers ran jobs
        assert all(os.path.realpath(r["cwd"]) == os.path.realpath(tmp_path / "wd") for r in results)
        assert min(trials.losses()) == pytest.approx((best["x"] - 0.25) ** 2)
        docs = list(db_of(mongo_url).jobs.find({"exp_key": "e"}))
        assert all(d["lease_token"] is None and d["worker"]["pid"] in {p.pid for p in procs} for d in docs)
        live = list(db_of(mongo_url).workers.find({"kind": "hyperopt"}))
        assert len(live) == 2 and all(w["gpu"] == "none" for w in live)
    finally:
        codes = [stop(p) for p in procs]
    assert codes == [0, 0], [log_text(tmp_path / f"w{i}.log") for i in range(2)]


def test_without_allow_pickle_the_worker_refuses_with_one_line(mongo_url):
    for args in (["--mongo", mongo_url], []):  # also before starting an embedded server
        res = run_cli("hyperopt-worker", *args, timeout=120)
        assert res.returncode == 2
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
        assert "--allow-pickle" in lines[0] and "unpickling" in lines[0]


def _fmin_in_background(mongo_url, objective, max_evals=1):
    trials = MongoTrials(jobs_url(mongo_url), exp_key="e")
    th = threading.Thread(target=fmin, args=(objective, hp.uniform("x", -1, 1)), daemon=True,
                          kwargs=dict(algo=rand.suggest, max_evals=max_evals, trials=trials, show_progressbar=False,
                                      rstate=np.random.default_rng(1)))
    th.start()
    return th


def test_sigterm_hands_the_job_back_and_another_worker_finishes_it(mongo_url, tmp_path):
    marker = tmp_path / "first-run"
    th = _fmin_in_background(mongo_url, once_slow_objective(str(marker)))
    first = worker(mongo_url, tmp_path, "first")
    try:
        wait_for(marker.exists, 120, what="the first worker to start the job")
        assert stop(first, signal.SIGTERM) == 0
    finally:
        stop(first, signal.SIGKILL)
    jobs = db_of(mongo_url).jobs
    doc = jobs.find_one({"exp_key": "e"})
    assert doc["state"] == 0 and doc["requeues"][0]["reason"] == "worker shutdown"  # queued again
    second = worker(mongo_url, tmp_path, "second")
    try:
        th.join(120)
        assert not th.is_alive()
        doc = jobs.find_one({"exp_key": "e"})
        assert doc["result"]["status"] == "ok" and doc["result"]["pid"] == second.pid
    finally:
        stop(second)


def test_a_killed_workers_job_is_requeued_after_its_lease(mongo_url, tmp_path):
    marker = tmp_path / "first-run"
    th = _fmin_in_background(mongo_url, once_slow_objective(str(marker)))
    first = worker(mongo_url, tmp_path, "first", "--lease", "2")
    try:
        wait_for(marker.exists, 120, what="the first worker to start the job")
    finally:
        first.kill()
        first.wait()
    second = worker(mongo_url, tmp_path, "second", "--lease", "2")
    try:
        th.join(120)
        assert not th.is_alive()
        doc = db_of(mongo_url).jobs.find_one({"exp_key": "e"})
        assert doc["result"]["status"] == "ok" and doc["result"]["pid"] == second.pid
        assert len(doc["lease_expiries"]) == 1 and doc["attempts"] == 1
    finally:
        stop(second)


def test_a_raising_objective_is_recorded_and_the_worker_goes_on(mongo_url, tmp_path):
    def objective(x):
        if x < 0:
            raise ValueError(f"negative x {x}")
        return {"status": "ok", "loss": x, "cwd": os.getcwd()}

    proc = worker(mongo_url, tmp_path, "w")
    try:
        trials = MongoTrials(jobs_url(mongo_url), exp_key="e")
        fmin(objective, hp.uniform("x", -1, 1), algo=rand.suggest, max_evals=6, trials=trials,
             show_progressbar=False, rstate=np.random.default_rng(5))
        results = [t["result"] for t in trials.trials]
        failed = [r for r in results if r["status"] == "fail"]
        assert failed and all(r["failure"]["kind"] == "exception" and "ValueError: negative x" in
                              r["failure"]["reason"] for r in failed)
        assert len(results) == 6 and proc.poll() is None
        # every job ran in its own directory under the worker's, also after a job raised (not nested in it),
        # and directories the jobs left empty are gone
        docs = {str(d["_id"]): d for d in db_of(mongo_url).jobs.find({"exp_key": "e"})}
        for job_id, d in docs.items():
            if d["result"]["status"] == "ok":
                assert os.path.realpath(d["result"]["cwd"]) == os.path.realpath(tmp_path / "cwd" / job_id)
        assert list((tmp_path / "cwd").iterdir()) == []
    finally:
        stop(proc)
