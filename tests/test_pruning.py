"""Pruning with real workers: decisions from the curves in MongoDB, across workers, kills and resumes."""

from __future__ import annotations

import collections
import datetime
import json
import os
import signal

import pytest

from helpers import db_of, log_text, mongotune, queue_trials, run_cli, stop, wait_for
from mongotune.pool.coordinator import Coordinator
from mongotune.store.studies import Study

pytestmark = [pytest.mark.timeout(400)]


def _docs(db, name):
    return {d["tid"]: d for d in db.jobs.find({"exp_key": f"mongotune:{name}"})}


def _last_run(doc):
    curve = doc.get("curve") or []
    latest = curve[-1]["lease"] if curve else None
    return [p for p in curve if p["lease"] == latest]


def test_asha_stops_the_clearly_worse_trial_at_its_rung_and_promotes_the_better(mongo_url, tmp_path):
    coord = Coordinator(mongo_url)
    coord.create(Study(name="asha", max_evals=3, objective={"kind": "synthetic", "steps": 9, "sleep_s": 0.9},
                       pruner={"kind": "asha", "min_epochs": 1, "reduction_factor": 3}))
    # loss (x - 0.3)^2, read at step s as loss * (1 + 1/s): 1.0 is poor, 0.3 perfect, 0.9 clearly worse
    queue_trials(mongo_url, "asha", [{"x": 1.0}, {"x": 0.3}, {"x": 0.9}])
    w = mongotune("worker", "--mongo", mongo_url, "--study", "asha", log=tmp_path / "w.log")
    db = db_of(mongo_url)
    try:
        wait_for(lambda: db.jobs.count_documents({"exp_key": "mongotune:asha", "state": 2}) == 3, 120, 0.1,
                 what="three finished trials")
        assert w.poll() is None  # the worker goes on after a pruned trial
    finally:
        assert stop(w) == 0, log_text(tmp_path / "w.log")[-2000:]
    docs = _docs(db, "asha")
    first, best, worse = docs[1], docs[2], docs[3]
    assert [p["step"] for p in first["curve"]] == list(range(1, 10)) and not first["result"].get("pruned")
    assert [p["step"] for p in best["curve"]] == list(range(1, 10)) and not best["result"].get("pruned")
    r = worse["result"]
    assert r["status"] == "ok" and r["pruned"] is True and r["pruned_at"] == 1, r
    assert [p["step"] for p in worse["curve"]] == [1]  # it stopped at once and kept its curve
    assert r["loss"] == pytest.approx(0.72)  # its best reading: (0.9 - 0.3)^2 * (1 + 1/1)
    assert r["pruned_by"] == {"pruner": "asha", "step": 1, "rung": 1, "value": pytest.approx(0.72),
                              "competing": 3, "kept": 1, "rank": 2}
    assert worse["artifacts"]["path"] and (tmp_path / "w.log").exists()
    snap = Coordinator(mongo_url).snapshot("asha")
    assert snap.counts["pruned"] == 1 and snap.counts["ok"] == 2 and snap.best_tid == 2
    status = run_cli("status", "asha", "--mongo", mongo_url, "--json")
    assert json.loads(status.stdout)["counts"]["pruned"] == 1
    board = run_cli("leaderboard", "asha", "--mongo", mongo_url, "--pruned")
    assert "3 p@1" in board.stdout and "p@N: pruned at step N" in board.stdout


def _check_decisions(docs, reduction_factor):
    """Every pruning decision was right given the readings the deciding worker could see: the trial's
    value at its rung was beaten by at least ``kept`` of the values recorded there up to its own reading
    (plus a second for writes in flight)."""
    readings = collections.defaultdict(list)  # step -> [(at, value, tid)]
    for d in docs.values():
        for p in _last_run(d):
            readings[p["step"]].append((p["at"], p["value"], d["tid"]))
    pruned = [d for d in docs.values() if d["result"].get("pruned")]
    for d in pruned:
        step = d["result"]["pruned_at"]
        mine = next(p for p in _last_run(d) if p["step"] == step)
        horizon = mine["at"] + datetime.timedelta(seconds=1)
        seen = [v for at, v, tid in readings[step] if at <= horizon and tid != d["tid"]]
        kept = d["result"]["pruned_by"]["kept"]
        assert sum(1 for v in seen if v < mine["value"]) >= kept, (d["tid"], step, mine["value"], sorted(seen))
        assert kept == max(1, d["result"]["pruned_by"]["competing"] // reduction_factor)
    return pruned


def test_decisions_stay_right_with_a_worker_joining_and_after_a_resume(mongo_url, tmp_path):
    opts = json.dumps({"steps": 4, "sleep_s": 1.2})
    db = db_of(mongo_url)
    w1 = mongotune("worker", "--mongo", mongo_url, log=tmp_path / "w1.log")
    launch = mongotune("launch", "x", "--study", "pr", "--objective", "synthetic", "--options", opts,
                       "--max-evals", 16, "--algo", "rand", "--pruner", "asha", "--reduction-factor", 2,
                       "--mongo", mongo_url, "-q", log=tmp_path / "launch.log")
    w2 = None
    try:
        wait_for(lambda: db.jobs.count_documents({"exp_key": "mongotune:pr", "state": 2}) >= 4, 180, 0.1,
                 what="four finished trials")
        w2 = mongotune("worker", "--mongo", mongo_url, log=tmp_path / "w2.log")  # joins mid-study
        wait_for(lambda: db.jobs.count_documents({"exp_key": "mongotune:pr", "state": 2}) >= 8, 180, 0.1,
                 what="eight finished trials")
        launch.send_signal(signal.SIGKILL)
        launch.wait()
        r = run_cli("resume", "pr", "--mongo", mongo_url, "-q", timeout=240)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "16/16 trials finished" in r.stdout and "pruned" in r.stdout
    finally:
        stop(launch, signal.SIGKILL)
        for w in (w1, w2):
            if w is not None:
                assert stop(w) == 0
    docs = _docs(db, "pr")
    assert len(docs) == 16 and all(d["state"] == 2 and d["result"]["status"] == "ok" for d in docs.values())
    pruned = _check_decisions(docs, 2)
    assert pruned, "with reduction factor 2 and 16 random trials, some must be stopped"
    deciders = {d["worker"]["pid"] for d in pruned}
    assert w2.pid in {d["worker"]["pid"] for d in docs.values()}
    assert deciders  # pruned by whichever worker ran them
    for d in docs.values():  # every trial kept its curve, pruned or not
        assert d["curve"] and _last_run(d)[-1]["step"] == (d["result"].get("pruned_at") or 4)


def test_a_worker_killed_in_a_pruned_trials_last_epoch_loses_nothing(mongo_url, tmp_path):
    coord = Coordinator(mongo_url)
    coord.create(Study(name="kp", max_evals=2, lease_s=3.0,
                       objective={"kind": "synthetic", "steps": 4, "sleep_s": 8.0},
                       pruner={"kind": "asha", "min_epochs": 2, "reduction_factor": 2}))
    queue_trials(mongo_url, "kp", [{"x": 0.3}, {"x": 1.0}])
    db = db_of(mongo_url)
    a = mongotune("worker", "--mongo", mongo_url, "--study", "kp", log=tmp_path / "a.log")
    b = None
    try:
        # trial 2 (clearly worse) is stopped at its rung, step 2: kill its worker during that epoch
        wait_for(lambda: any(p["step"] == 1 for p in (db.jobs.find_one({"exp_key": "mongotune:kp", "tid": 2})
                                                       or {}).get("curve") or []), 120, 0.05,
                 what="trial 2's first reading")
        a.send_signal(signal.SIGKILL)
        a.wait()
        b = mongotune("worker", "--mongo", mongo_url, "--study", "kp", log=tmp_path / "b.log")
        wait_for(lambda: db.jobs.count_documents({"exp_key": "mongotune:kp", "state": 2}) == 2, 120, 0.1,
                 what="both trials finished")
    finally:
        if b is not None:
            assert stop(b) == 0, log_text(tmp_path / "b.log")[-2000:]
    docs = _docs(db, "kp")
    assert not docs[1]["result"].get("pruned") and docs[1]["result"]["loss"] == 0.0
    t2 = docs[2]
    assert t2["result"]["pruned"] is True and t2["result"]["pruned_at"] == 2
    assert t2["attempts"] == 1 and len(t2["lease_expiries"]) == 1  # the killed run was noticed and retried
    runs = collections.Counter(p["lease"] for p in t2["curve"])
    assert len(runs) == 2 and [p["step"] for p in _last_run(t2)] == [1, 2]  # both runs' readings are kept
    assert t2["worker"]["pid"] == b.pid


@pytest.mark.slow
def test_a_keras_launch_like_the_demo_prunes_and_keeps_every_curve(mongo_url, tmp_path):
    """A launch like ``./dev demo``'s, smaller and with ASHA: the baseline on digits, TPE, 2 workers.  With reduction
    factor 2, ten trials and every trial compared at epoch 1, a run where no trial falls in the worse half
    of its rung has odds below 1 in 1,000 (ties, which keep both, aside)."""
    epochs, n = 3, 10
    r = run_cli("launch", "baseline", "--study", "demo", "--dataset", "digits", "--max-evals", n,
                "--startup-trials", 4, "--workers", 2, "--epochs", epochs, "--patience", 3,
                "--pruner", "asha", "--min-epochs", 1, "--reduction-factor", 2, "--mongo", mongo_url, "-q",
                timeout=380)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{n}/{n} trials finished" in r.stdout and "asha pruning" in r.stdout
    docs = _docs(db_of(mongo_url), "demo")
    assert len(docs) == n and all(d["state"] == 2 and d["result"]["status"] == "ok" for d in docs.values())
    pruned = [d for d in docs.values() if d["result"].get("pruned")]
    assert pruned, [d["result"]["val_accuracy"] for d in docs.values()]
    for d in docs.values():
        res, steps = d["result"], [p["step"] for p in _last_run(d)]
        values = [p["value"] for p in _last_run(d)]
        if res.get("pruned"):
            at = res["pruned_at"]
            assert at in (1, 2) and res["pruned_by"]["rung"] == at  # rungs at epochs 1 and 2
            assert steps == list(range(1, at + 1))  # stopped at once, its curve kept
            assert res["loss"] == pytest.approx(-max(values) ** 2)  # the recipe's loss at its best epoch
        else:
            assert steps == list(range(1, epochs + 1))
            assert values == pytest.approx(res["history"]["val_accuracy"])
        assert os.path.exists(os.path.join(d["artifacts"]["path"], "params.json"))
    status = json.loads(run_cli("status", "demo", "--mongo", mongo_url, "--json").stdout)
    assert status["counts"]["pruned"] == len(pruned) and status["counts"]["ok"] == n - len(pruned)
    best = min(docs.values(), key=lambda d: d["result"]["loss"])
    assert status["best"]["tid"] == best["tid"]


def test_envelope_waits_for_complete_trials_then_stops_a_trial_below_the_winners(mongo_url, tmp_path):
    coord = Coordinator(mongo_url)
    coord.create(Study(name="env", max_evals=5, objective={"kind": "synthetic", "steps": 4, "sleep_s": 0.4},
                       pruner={"kind": "envelope", "min_epochs": 1}))
    # three good trials complete first (one worker takes them in tid order), then a clearly worse one
    # arrives while a fourth good one would still be allowed to go on
    queue_trials(mongo_url, "env", [{"x": 0.3}, {"x": 0.35}, {"x": 0.2}, {"x": 1.0}, {"x": 0.32}])
    w = mongotune("worker", "--mongo", mongo_url, "--study", "env", log=tmp_path / "w.log")
    db = db_of(mongo_url)
    try:
        wait_for(lambda: db.jobs.count_documents({"exp_key": "mongotune:env", "state": 2}) == 5, 120, 0.1,
                 what="five finished trials")
    finally:
        assert stop(w) == 0, log_text(tmp_path / "w.log")[-2000:]
    docs = _docs(db, "env")
    assert [bool(docs[t]["result"].get("pruned")) for t in range(1, 6)] == [False, False, False, True, False]
    r = docs[4]["result"]
    assert r["pruned_at"] == 1 and [p["step"] for p in docs[4]["curve"]] == [1]
    assert r["pruned_by"]["pruner"] == "envelope" and sorted(r["pruned_by"]["leaders"]) == [1, 2, 3]
    # the bar is the worst of the three winners at step 1: (0.2 - 0.3)^2 * 2 = 0.02; trial 4 read 0.98
    assert r["pruned_by"]["bar"] == pytest.approx(0.02) and r["pruned_by"]["value"] == pytest.approx(0.98)
