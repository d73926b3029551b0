"""A study has at most one live coordinator, and no interleaving of coordinators exceeds its budget."""

from __future__ import annotations

import collections
import json
import signal
import subprocess

import pytest

from helpers import db_of, log_text, mongotune, run_cli, stop, wait_for

pytestmark = [pytest.mark.timeout(300)]


def _runs(rec):
    return collections.Counter(p.name.split("-")[0] for p in rec.iterdir()) if rec.exists() else {}


def test_a_second_coordinator_refuses_or_waits_and_the_budget_holds(mongo_url, tmp_path):
    rec = tmp_path / "runs"
    opts = json.dumps({"sleep_s": 0.5, "record_dir": str(rec)})
    db = db_of(mongo_url)
    # no worker yet: the launch's coordinator stays alive with its trials queued
    launch = mongotune("launch", "x", "--study", "c2", "--objective", "synthetic", "--options", opts,
                       "--max-evals", 6, "--mongo", mongo_url, "-q", log=tmp_path / "launch.log")
    w = None
    try:
        wait_for(lambda: (db.studies.find_one({"_id": "c2"}) or {}).get("coordinator")
                 and db.jobs.count_documents({"exp_key": "mongotune:c2"}) >= 1, 120, 0.1, what="a running launch")
        busy = run_cli("resume", "c2", "--mongo", mongo_url, "-q")
        assert busy.returncode == 2 and "another coordinator" in busy.stderr and "--wait" in busy.stderr, busy.stderr
        more = run_cli("resume", "c2", "--max-evals", 9, "--mongo", mongo_url, "-q")
        assert more.returncode == 2 and "another coordinator" in more.stderr  # the running one would not see it
        assert db.studies.find_one({"_id": "c2"})["max_evals"] == 6
        waiter = mongotune("resume", "c2", "--wait", "--mongo", mongo_url, "-q", log=tmp_path / "waiter.log")
        wait_for(lambda: "waiting for it to end" in log_text(tmp_path / "waiter.log"), 60, 0.1, what="a waiter")
        w = mongotune("worker", "--mongo", mongo_url, log=tmp_path / "w.log")
        assert launch.wait(180) == 0, log_text(tmp_path / "launch.log")[-2000:]
        assert waiter.wait(120) == 0, log_text(tmp_path / "waiter.log")[-2000:]
        assert "6/6 trials finished" in log_text(tmp_path / "waiter.log")
    finally:
        stop(launch, signal.SIGKILL)
        if w is not None:
            stop(w)
    docs = list(db.jobs.find({"exp_key": "mongotune:c2"}))
    assert len(docs) == 6 and all(d["state"] == 2 for d in docs)
    assert len(_runs(rec)) == 6 and set(_runs(rec).values()) == {1}
    st = db.studies.find_one({"_id": "c2"})
    assert st["status"] == "done" and st["coordinator"] is None and st["trials_created"] == 6


def test_resumes_racing_after_a_killed_coordinator_never_exceed_the_budget(mongo_url, tmp_path):
    rec = tmp_path / "runs"
    opts = json.dumps({"sleep_s": 0.5, "record_dir": str(rec)})
    db = db_of(mongo_url)
    w = mongotune("worker", "--mongo", mongo_url, log=tmp_path / "w.log")
    launch = mongotune("launch", "x", "--study", "c3", "--objective", "synthetic", "--options", opts,
                       "--max-evals", 8, "--mongo", mongo_url, "-q", log=tmp_path / "launch.log")
    try:
        wait_for(lambda: db.jobs.count_documents({"exp_key": "mongotune:c3", "state": 2}) >= 2, 120, 0.1,
                 what="two finished trials")
        launch.send_signal(signal.SIGKILL)
        launch.wait()
        racers = [mongotune("resume", "c3", "--mongo", mongo_url, "-q", log=tmp_path / f"r{i}.log")
                  for i in range(3)]
        codes = []
        for r in racers:
            try:
                codes.append(r.wait(180))
            except subprocess.TimeoutExpired:
                codes.append(None)
        logs = [log_text(tmp_path / f"r{i}.log") for i in range(3)]
        assert sorted(codes) == [0, 2, 2], (codes, logs)  # one took the study, the others were told why
        assert sum("another coordinator" in text for text in logs) == 2
    finally:
        stop(w)
    docs = list(db.jobs.find({"exp_key": "mongotune:c3"}))
    assert len(docs) == 8 and all(d["state"] == 2 for d in docs)
    assert len(_runs(rec)) == 8 and set(_runs(rec).values()) == {1}
