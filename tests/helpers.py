"""Helpers for tests that run real worker / coordinator / server processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pymongo

REPO = Path(__file__).resolve().parent.parent


def env(**extra) -> dict:
    e = os.environ.copy()
    e["PYTHONUNBUFFERED"] = "1"
    e["TF_CPP_MIN_LOG_LEVEL"] = "3"
    e["CUDA_VISIBLE_DEVICES"] = ""
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.update({k: str(v) for k, v in extra.items()})
    return e


def mongotune(*args, log: Path | None = None, extra_env: dict | None = None, **popen) -> subprocess.Popen:
    """Start ``python -m mongotune ARGS`` as a real process."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "mongotune", *map(str, args)], stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env(**(extra_env or {})),
                            **popen)


def run_cli(*args, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mongotune", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env(**kw), stdin=subprocess.DEVNULL)


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def db_of(url: str):
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
    return client.get_default_database()


def stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 30.0) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def log_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def queue_trials(url: str, study: str, params: list[dict], first_tid: int = 1) -> list[int]:
    """Queue trials with these exact params (as a coordinator would, but in a chosen order)."""
    from mongotune.store.trialdoc import QUEUED, TrialStore

    db = db_of(url)
    tids = []
    for i, p in enumerate(params):
        tid = first_tid + i
        db.jobs.insert_one(TrialStore.stamp({"tid": tid, "exp_key": f"mongotune:{study}", "state": QUEUED,
                                             "owner": None, "result": {"status": "new"}, "version": 0,
                                             "spec": None, "misc": {"tid": tid, "idxs": {}, "vals": {}}}, p))
        tids.append(tid)
    db.client.close()
    return tids


def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """A user error: exit code 2 and exactly one stderr line, starting with ``error:``, holding ``needles``."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error:"), lines[0]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def fmin_with_thread_worker(mongo_url: str, workdir: Path, fn, space, algo, max_evals: int, *, queue: int = 3,
                            seed: int = 5, poll_interval: float = 0.1):
    """Stock ``hyperopt.fmin`` on ``MongoTrials`` with a hyperopt-style ``MongoWorker`` in a thread.

    Returns ``(best, trials, evaluations)``; the worker stops once nothing is queued for 4 s.
    """
    import threading

    import numpy as np
    from hyperopt import fmin

    from mongotune.store import MongoJobs, MongoTrials, MongoWorker, ReserveTimeout

    url = mongo_url.split("?")[0] + "/jobs"
    done = []

    def work():
        w = MongoWorker(MongoJobs.new_from_connection_str(url), poll_interval=poll_interval, exp_key="e",
                        logfilename=None, allow_pickle=True, workdir=str(workdir / "wd"))
        while True:
            try:
                w.run_one(reserve_timeout=4)
            except ReserveTimeout:
                return
            done.append(1)

    th = threading.Thread(target=work, daemon=True)
    th.start()
    trials = MongoTrials(url, exp_key="e")
    best = fmin(fn, space, algo=algo, max_evals=max_evals, trials=trials, max_queue_len=queue,
                show_progressbar=False, rstate=np.random.default_rng(seed))
    th.join(60)
    assert not th.is_alive(), "the worker thread did not finish"
    return best, trials, len(done)
