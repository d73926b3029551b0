"""Each transition of the trial document, and its condition, on a real server.

Every write is one conditional update: these tests check that each applies
to the state it was meant for, and matches nothing for a stale token, a stale
state, or a retry of a write that already went through.
"""

from __future__ import annotations

import datetime
import time

import pymongo
import pytest

from mongotune.store.studies import Study, StudyBusy, StudyStore
from mongotune.store.trialdoc import (DONE, QUEUED, RUNNING, Lease, TrialStore, failure_result, new_token,
                                      validate_result)

KEY = "mongotune:t"
W1 = {"id": "w1", "host": "h1", "pid": 1, "gpu": None}
W2 = {"id": "w2", "host": "h2", "pid": 2, "gpu": "0"}


@pytest.fixture
def store(mongo_url):
    client = pymongo.MongoClient(mongo_url)
    db = client.get_default_database()
    s = TrialStore(db)
    s.ensure_indexes()
    yield s
    client.close()


def _queue(store, *tids, exp_key=KEY):
    for tid in tids:
        store.jobs.insert_one(TrialStore.stamp({"tid": tid, "exp_key": exp_key, "state": QUEUED, "owner": None,
                                                "result": {"status": "new"}, "version": 0}, {"x": tid / 10}))


def _doc(store, tid):
    return store.jobs.find_one({"exp_key": KEY, "tid": tid})


def _age(store, tid, seconds):
    """Make a running trial's heartbeat look ``seconds`` old (as if its worker went silent)."""
    store.jobs.update_one({"exp_key": KEY, "tid": tid},
                          {"$set": {"refresh_time": _doc(store, tid)["refresh_time"] - datetime.timedelta(seconds=seconds)}})


# ---------------------------------------------------------------- reserve
def test_reserve_takes_the_oldest_queued_trial_once(store):
    _queue(store, 2, 1, 3)
    a = store.reserve(W1, [KEY])
    b = store.reserve(W2, [KEY])
    assert (a.tid, b.tid) == (1, 2) and a.token != b.token
    assert a.params == {"x": 0.1} and a.attempt == 1
    doc = _doc(store, 1)
    assert doc["state"] == RUNNING and doc["owner"] == "w1" and doc["lease_token"] == a.token
    assert doc["worker"]["host"] == "h1" and doc["book_time"] and doc["refresh_time"]
    assert store.reserve(W1, ["mongotune:other"]) is None  # only the studies asked for
    store.reserve(W1, [KEY])
    assert store.reserve(W1, [KEY]) is None  # empty queue


def test_a_reservation_whose_reply_was_lost_is_found_by_its_token(store):
    _queue(store, 1)
    token = new_token()
    store.reserve(W1, [KEY], token)  # imagine the reply never arrived
    held = store.held_by(["some-other-attempt", token])
    assert held is not None and held.tid == 1 and held.token == token
    assert store.held_by(["nothing"]) is None


# ---------------------------------------------------------------- heartbeat
def test_heartbeat_needs_the_current_lease_of_that_very_trial(store):
    _queue(store, 1, 2)
    a = store.reserve(W1, [KEY])
    b = store.reserve(W2, [KEY])
    assert store.heartbeat(a, {"epoch": 1})
    assert _doc(store, 1)["progress"] == {"epoch": 1}
    # another token on this trial touches nothing; each token reaches its own trial only (a token
    # is fresh per reservation attempt, so no two trials ever hold the same one)
    assert not store.heartbeat(Lease(None, a.tid, KEY, "stale", 1), {"epoch": 9})
    assert _doc(store, 2).get("progress") is None and _doc(store, 1)["progress"] == {"epoch": 1}
    assert store.heartbeat(b, {"epoch": 2})
    assert _doc(store, 2)["progress"] == {"epoch": 2} and _doc(store, 1)["progress"] == {"epoch": 1}


def test_a_late_heartbeat_of_an_old_lease_touches_nothing(store):
    _queue(store, 1)
    old = store.reserve(W1, [KEY])
    assert store.release(old, "test")
    new = store.reserve(W2, [KEY])
    before = _doc(store, 1)
    time.sleep(0.01)
    assert not store.heartbeat(old, {"epoch": 7})
    assert _doc(store, 1) == before and store.heartbeat(new)


# ---------------------------------------------------------------- report
def test_report_appends_each_step_once(store):
    _queue(store, 1)
    a = store.reserve(W1, [KEY])
    assert store.report(a, 1, 0.5, 1.0)
    assert not store.report(a, 1, 0.5, 1.0)  # a retried write whose reply was lost
    assert store.report(a, 2, 0.7, 2.0)
    assert store.has_step(a, 2) and not store.has_step(a, 3)
    assert [(p["step"], p["value"]) for p in _doc(store, 1)["curve"]] == [(1, 0.5), (2, 0.7)]
    assert not store.report(Lease(None, 1, KEY, "stale", 1), 3, 0.9, 3.0)
    assert len(_doc(store, 1)["curve"]) == 2
    # handed back and run again: the new run records its own curve, the old points stay
    store.release(a, "worker shutdown")
    b = store.reserve(W2, [KEY])
    assert store.report(b, 1, 0.6, 1.0)
    rec = store.get(KEY, 1)
    assert [(p.step, p.value) for p in rec.curve] == [(1, 0.5), (2, 0.7), (1, 0.6)]
    assert [(p.step, p.value) for p in rec.last_curve] == [(1, 0.6)] and rec.curve[0].at is not None


# ---------------------------------------------------------------- finish
def test_finish_is_conditional_and_idempotent(store):
    _queue(store, 1)
    a = store.reserve(W1, [KEY])
    assert store.finish(a, {"loss": -0.9, "val_accuracy": 0.9}, {"duration_s": 1.5})
    doc = _doc(store, 1)
    assert doc["state"] == DONE and doc["result"] == {"status": "ok", "loss": -0.9, "val_accuracy": 0.9}
    assert doc["lease_token"] is None and doc["finished_lease"] == a.token and doc["finished"]
    assert store.finish(a, {"loss": -0.9})  # the retry of a finish that went through is recognised
    assert not store.finish(Lease(None, 1, KEY, "stale", 1), {"loss": -1.0})
    assert _doc(store, 1)["result"]["loss"] == -0.9  # a finished trial never changes again


def test_a_result_after_the_lease_expired_is_taken_while_nobody_finished_the_trial(store):
    _queue(store, 1, 2)
    a = store.reserve(W1, [KEY])
    _age(store, 1, 100)
    assert store.expire({KEY: (10.0, 3)}) == [(1, "requeued")]
    assert _doc(store, 1)["state"] == QUEUED
    # still queued: the late result is taken (the work is done)
    assert store.finish(a, {"loss": 0.25})
    doc = _doc(store, 1)
    assert doc["state"] == DONE and doc["result"]["loss"] == 0.25 and doc["attempts"] == 1

    # taken over and running elsewhere: the first to finish wins, the other worker's lease ends
    b = store.reserve(W1, [KEY])
    assert b.tid == 2
    _age(store, 2, 100)
    store.expire({KEY: (10.0, 3)})
    c = store.reserve(W2, [KEY])
    assert c.tid == 2 and c.attempt == 2
    assert store.finish(b, {"loss": 0.5})
    assert not store.heartbeat(c) and not store.finish(c, {"loss": 0.1})
    assert _doc(store, 2)["result"]["loss"] == 0.5


def test_a_result_is_dropped_once_the_trial_was_finished_by_another_worker(store):
    _queue(store, 1)
    a = store.reserve(W1, [KEY])
    _age(store, 1, 100)
    store.expire({KEY: (10.0, 3)})
    b = store.reserve(W2, [KEY])
    assert store.finish(b, {"loss": 0.1})
    before = _doc(store, 1)
    assert not store.finish(a, {"loss": 0.9})
    assert _doc(store, 1) == before


def test_results_are_validated():
    assert validate_result(0.5) == {"status": "ok", "loss": 0.5}
    nan = validate_result({"loss": float("nan")})
    assert nan["status"] == "fail" and nan["failure"]["kind"] == "nan"
    bad = validate_result({"status": "great", "loss": 1.0})
    assert bad["status"] == "fail" and bad["failure"]["kind"] == "result" and "status" in bad["failure"]["reason"]
    pruned = validate_result({"loss": -0.3, "pruned": True, "pruned_at": 2})
    assert pruned == {"status": "ok", "loss": -0.3, "pruned": True, "pruned_at": 2}
    f = failure_result("exception", "boom", "Traceback\n" + "\n".join(f"line {i}" for i in range(40)))
    assert f["failure"]["traceback"].count("\n") == 14


# ---------------------------------------------------------------- release, requeue, expire
def test_release_hands_back_without_counting_an_attempt(store):
    _queue(store, 1)
    a = store.reserve(W1, [KEY])
    assert store.release(a, "worker shutdown")
    doc = _doc(store, 1)
    assert doc["state"] == QUEUED and doc["owner"] is None and doc["lease_token"] is None
    assert doc["attempts"] == 0 and doc["requeues"] == [{"reason": "worker shutdown", "token": a.token}]
    assert store.release(a, "worker shutdown")  # retried: recognised by its token
    assert len(_doc(store, 1)["requeues"]) == 1
    assert not store.release(Lease(None, 1, KEY, "stale", 1), "x")


def test_operator_requeue(store):
    _queue(store, 1, 2)
    store.reserve(W1, [KEY])
    assert store.requeue(KEY, 2) == []  # queued, not running
    assert store.requeue(KEY) == [1]
    assert _doc(store, 1)["state"] == QUEUED and _doc(store, 1)["requeues"][-1]["reason"] == "operator"


def test_expire_requeues_then_fails_after_max_attempts(store):
    _queue(store, 1)
    for attempt in (1, 2):
        lease = store.reserve(W1, [KEY])
        assert lease.attempt == attempt
        assert store.expire({KEY: (10.0, 3)}) == []  # fresh heartbeat: left alone
        _age(store, 1, 100)
        assert store.expire({KEY: (10.0, 3)}) == [(1, "requeued")]
        assert not store.heartbeat(lease)
    store.reserve(W1, [KEY])
    _age(store, 1, 100)
    assert store.expire({KEY: (10.0, 3)}) == [(1, "failed")]
    doc = _doc(store, 1)
    assert doc["state"] == DONE and doc["result"]["failure"]["kind"] == "lease" and doc["attempts"] == 3
    assert [e["attempt"] for e in doc["lease_expiries"]] == [1, 2, 3]
    assert store.expire({KEY: (10.0, 3)}) == []


# ---------------------------------------------------------------- reads
def test_counts_best_and_ranking(store):
    _queue(store, 1, 2, 3, 4, 5, 6)
    leases = [store.reserve(W1, [KEY]) for _ in range(5)]
    store.finish(leases[0], {"loss": 0.3})
    store.finish(leases[1], {"loss": 0.1, "pruned": True, "pruned_at": 1})
    store.finish(leases[2], failure_result("exception", "boom"))
    store.finish(leases[3], {"loss": 0.2})
    c = store.counts(KEY)
    assert c.as_dict() == {"queued": 1, "running": 1, "ok": 2, "failed": 1, "pruned": 1, "error": 0}
    assert c.finished == 4 and c.total == 6
    assert store.best(KEY).tid == 4  # a pruned trial is not the best while a complete one exists
    assert [r.tid for r in store.ranked(KEY)] == [4, 1]
    # one rule ranks everywhere: the pruned trial (lowest loss, but stopped early) after those that ran to the end
    assert [r.tid for r in store.ranked(KEY, include_pruned=True)] == [4, 1, 2]
    assert [r.outcome for r in store.records(KEY)] == ["ok", "pruned", "failed", "ok", "running", "queued"]
    assert [r.tid for r in store.running(KEY)] == [5]


# ---------------------------------------------------------------- the study's coordinator lease and budget
def test_one_coordinator_per_study_and_the_budget_fence(mongo_url):
    client = pymongo.MongoClient(mongo_url)
    studies = StudyStore(client.get_default_database())
    studies.create(Study(name="s", max_evals=5, objective={"kind": "synthetic"}))
    a = studies.acquire_coordinator("s", {"host": "elsewhere", "pid": 1}, lease_s=30)
    with pytest.raises(StudyBusy, match="another coordinator"):
        studies.acquire_coordinator("s", {"host": "elsewhere", "pid": 2}, lease_s=30)
    assert studies.reset_created("s", a, 0)
    assert studies.claim_trials("s", a, 3, 5) and studies.claim_trials("s", a, 2, 5)
    assert not studies.claim_trials("s", a, 1, 5)  # the budget is spent
    # the holder goes silent longer than the lease: another takes over, and the old one is fenced off
    studies.coll.update_one({"_id": "s"}, {"$set": {"coordinator.heartbeat": datetime.datetime(2000, 1, 1)}})
    b = studies.acquire_coordinator("s", {"host": "elsewhere", "pid": 2}, lease_s=30)
    assert studies.reset_created("s", b, 3)
    assert not studies.beat_coordinator("s", a) and not studies.claim_trials("s", a, 1, 5)
    assert studies.claim_trials("s", b, 2, 5) and not studies.claim_trials("s", b, 1, 5)
    studies.release_coordinator("s", b)
    assert studies.coordinator("s") is None
    client.close()


# ---------------------------------------------------------------- edges: racing heartbeats, late results, long curves
def test_a_heartbeat_racing_expire_keeps_its_trial(store):
    """The reaper reads a trial as stale; its heartbeat lands before the reaper's write: the write matches
    nothing (it checks the heartbeat's age again), the trial stays with its worker, no attempt counted."""
    _queue(store, 1)
    lease = store.reserve(W1, [KEY])
    _age(store, 1, 100)
    (doc, (lease_s, max_attempts)), = store.stale({KEY: (10.0, 3)})
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    assert store.heartbeat(lease)  # lands between the read and the write
    assert store.expire_one(doc, lease_s, max_attempts, now) is None
    after = _doc(store, 1)
    assert after["state"] == RUNNING and after["lease_token"] == lease.token
    assert after["attempts"] == 0 and not after.get("lease_expiries")
    assert store.heartbeat(lease) and store.expire({KEY: (10.0, 3)}) == []


def test_a_late_result_keeps_its_own_curve_and_artifacts(store):
    """First finished wins: the trial then shows that attempt's result, its curve as the last run, and its
    files, not those of the attempt that had taken the trial over."""
    _queue(store, 1)
    a = store.reserve(W1, [KEY])
    for step in (1, 2, 3):
        store.report(a, step, 0.1 * step, float(step))
    store.record_artifacts(a, "h1", "/runs/s/trial-00001/attempt-1")
    _age(store, 1, 100)
    assert store.expire({KEY: (10.0, 3)}) == [(1, "requeued")]
    b = store.reserve(W2, [KEY])
    for step in (1, 2):
        store.report(b, step, 0.9, float(step))
    store.record_artifacts(b, "h2", "/runs/s/trial-00001/attempt-2")
    art = {"artifacts": {"host": "h1", "path": "/runs/s/trial-00001/attempt-1"}}
    assert store.finish(a, {"loss": -0.3, "val_accuracy": 0.3}, art)  # worker 1 comes back with its result
    rec = store.get(KEY, 1)
    assert rec.outcome == "ok" and rec.loss == -0.3
    assert rec.artifacts.host == "h1" and rec.artifacts.path.endswith("attempt-1")
    assert [(p.step, p.value) for p in rec.last_curve] == [(1, 0.1), (2, 0.2), (3, 0.1 * 3)]
    assert len(rec.curve) == 5  # the other run's points stay, before it
    assert not store.heartbeat(b) and not store.finish(b, {"loss": -0.9})
    assert store.finish(a, {"loss": -0.3}, art)  # a retry is recognised, and changes nothing
    assert store.get(KEY, 1).last_curve == rec.last_curve


def test_a_late_result_without_artifacts_does_not_keep_another_attempts(store):
    _queue(store, 1)
    a = store.reserve(W1, [KEY])
    _age(store, 1, 100)
    store.expire({KEY: (10.0, 3)})
    b = store.reserve(W2, [KEY])
    store.record_artifacts(b, "h2", "/runs/s/trial-00001/attempt-2")
    assert store.finish(a, failure_result("config", "no artifact directory"))
    assert _doc(store, 1)["artifacts"] is None


def test_a_long_run_curve_is_thinned_evenly_and_keeps_the_steps_asked_for(store):
    _queue(store, 1, 2)
    old = store.reserve(W1, [KEY])
    store.report(old, 1, 0.5, 1.0)
    store.release(old, "worker shutdown")
    run = store.reserve(W2, [KEY])
    rungs = {3, 9, 27, 81}
    for step in range(1, 301):
        assert store.report(run, step, step / 300, float(step), keep=lambda s: s in rungs, limit=40)
        assert len(_doc(store, 1)["curve"]) <= 1 + 40
    rec = store.get(KEY, 1)
    steps = [p.step for p in rec.last_curve]
    assert steps[0] == 1 and steps[-1] == 300 and rungs <= set(steps) and steps == sorted(steps)
    assert 20 <= len(steps) <= 40
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    assert max(gaps) <= 3 * 300 / 20  # spread over the whole run, not only its end
    assert [(p.step, p.value) for p in rec.curve[:1]] == [(1, 0.5)]  # the earlier run is left alone
    assert not store.report(run, 300, 1.0, 300.0, limit=40)  # a retried write is still recognised
