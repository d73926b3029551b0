"""The store's reads and writes give MongoDB's answers with the filters the embedded server
answers cheaply (bench/bench_server.py measures the cost; these check the answers).

* an insert is an upsert on the new ``_id``;
* a lease is named by its token alone, which every transition out of running clears;
* a reservation looks at the queued trials by state and takes one by ``_id`` + state;
* a curve point is added with ``$addToSet`` (a retry sends the very same point);
* the coordinator's view reads the active trials by state and checks the study itself,
  and launch's progress takes counts, the best trial and the running trials from it;
* a pruner's curve reads filter on one field and check the study here.
"""

from __future__ import annotations

import datetime
import math
import threading
import time

import pymongo
import pytest
from bson import ObjectId

from mongotune.pool.coordinator import Coordinator, _StudyTrials, resolve_space
from mongotune.pool.worker import _CurveCache
from mongotune.store import MongoJobs, decode
from mongotune.store.progress import snapshot
from mongotune.store.studies import Study
from mongotune.store.trialdoc import DONE, ERROR, QUEUED, RUNNING, TrialStore, new_token

A, B = "mongotune:a", "mongotune:b"
W1 = {"id": "w1", "host": "h1", "pid": 1, "gpu": None}


@pytest.fixture
def store(mongo_url):
    client = pymongo.MongoClient(mongo_url)
    s = TrialStore(client.get_default_database())
    s.ensure_indexes()
    yield s
    client.close()


def _trial(tid, exp_key=A, state=QUEUED, **extra) -> dict:
    """A trial document as fmin and the coordinator write it (dotted labels, as spaces.py makes)."""
    doc = {"state": state, "tid": tid, "spec": None, "result": {"status": "new"},
           "misc": {"tid": tid, "cmd": ["domain_attachment", "FMinIter_Domain"], "workdir": None,
                    "idxs": {"conv.blocks": [tid]}, "vals": {"conv.blocks": [2]}},
           "exp_key": exp_key, "owner": None, "version": 0, "book_time": None, "refresh_time": None}
    TrialStore.stamp(doc, {"conv": {"blocks": 2}, "x": tid})
    doc.update(extra)
    return doc


def _queue(store, *tids, exp_key=A, **extra):
    mj = MongoJobs(store.db, store.jobs, None, store.db.client, None, "spec")
    return [mj.insert(_trial(t, exp_key, **extra)) for t in tids]


def _doc(store, tid, exp_key=A):
    return store.jobs.find_one({"exp_key": exp_key, "tid": tid})


# ------------------------------------------------------------------------------------ insert
def test_insert_stores_the_document_once_and_a_retry_changes_nothing(store):
    mj = MongoJobs(store.db, store.jobs, None, store.db.client, None, "spec")
    doc = _trial(7, result={"status": "new", "loss": float("nan")})
    stored = mj.insert(doc)
    assert isinstance(stored["_id"], ObjectId) and "_id" not in doc
    got = decode(store.jobs.find_one({"_id": stored["_id"]}))
    assert math.isnan(got["result"].pop("loss")) and math.isnan(stored["result"].pop("loss"))
    assert got == stored  # dotted names inside misc stored as they are
    mj.insert(dict(stored, state=DONE))  # a retry after a lost reply, even a different one, changes nothing
    assert store.jobs.count_documents({"tid": 7}) == 1 and _doc(store, 7)["state"] == QUEUED
    bare = mj.insert({"_id": "bare"})  # nothing but an _id: an upsert would have nothing to set
    assert store.jobs.find_one({"_id": bare["_id"]}) == {"_id": "bare"}


# ------------------------------------------------------------------------------------ reserve
def test_reserve_takes_the_oldest_queued_trial_of_the_studies_asked_for(store):
    _queue(store, 5, 3)
    _queue(store, 4, exp_key=B)
    _queue(store, 1, owner="odd")  # queued but owned (not a state mongotune writes): never taken
    _queue(store, 2, state=RUNNING, owner="w0")
    assert [store.reserve(W1, [A, B]).tid for _ in range(3)] == [3, 4, 5]
    assert store.reserve(W1, [A, B]) is None
    assert _doc(store, 1)["state"] == QUEUED


def test_concurrent_reservations_take_each_trial_once(store, mongo_url):
    _queue(store, *range(24))
    got, errors = [], []

    def worker(name):
        client = pymongo.MongoClient(mongo_url)
        try:
            s = TrialStore(client.get_default_database())
            while (lease := s.reserve({**W1, "id": name}, [A], new_token())) is not None:
                got.append((lease.tid, name, lease.token))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and sorted(t for t, _, _ in got) == list(range(24))
    for tid, name, token in got:
        doc = _doc(store, tid)
        assert (doc["owner"], doc["lease_token"]) == (name, token)


def test_mongojobs_reserve_looks_by_state_and_checks_cond_here(store):
    mj = MongoJobs(store.db, store.jobs, None, store.db.client, None, "spec")
    for tid, study in ((5, "a"), (3, "a"), (1, "b")):
        mj.insert(_trial(tid, study=study))
    mj.insert(_trial(0, owner="odd"))
    nostudy = _trial(6)
    mj.insert(nostudy)
    assert [mj.reserve("w", cond={"study": "a"})["tid"] for _ in range(2)] == [3, 5]
    assert mj.reserve("w", cond={"study": "a"}) is None
    assert mj.reserve("w", cond={"study": {"$exists": True}})["tid"] == 1
    assert mj.reserve("w", cond={"tid": {"$gte": 6}})["tid"] == 6  # an operator goes to the server
    assert _doc(store, 0)["state"] == QUEUED and _doc(store, 3)["version"] == 1


# ------------------------------------------------------------------------------------ leases
@pytest.mark.parametrize("transition", ["finish", "release", "expire", "fail-expired", "operator"])
def test_a_lease_token_matches_nothing_once_its_trial_leaves_running(store, transition):
    _queue(store, 1, attempts=1 if transition == "fail-expired" else 0)
    lease = store.reserve(W1, [A])
    assert store.heartbeat(lease, {"epoch": 1}) and store.report(lease, 1, 0.5, 1.0)
    if transition == "finish":
        assert store.finish(lease, {"loss": 0.5})
    elif transition == "release":
        assert store.release(lease, "test")
    elif transition in ("expire", "fail-expired"):
        store.jobs.update_one({"tid": 1}, {"$set": {"refresh_time": datetime.datetime(2000, 1, 1)}})
        out = store.expire({A: (60.0, 2)})
        assert out == [(1, "failed" if transition == "fail-expired" else "requeued")]
    else:
        assert store.requeue(A) == [1]
    doc = _doc(store, 1)
    assert doc["lease_token"] is None and doc["state"] in (QUEUED, DONE)
    assert not store.heartbeat(lease, {"epoch": 9})
    assert not store.report(lease, 2, 0.1, 2.0) and not store.has_step(lease, 1)
    assert not store.record_artifacts(lease, "h", "/p")
    if transition in ("release", "operator"):  # (a release there counts as the retry of that hand-back)
        assert not store.finish(lease, {"loss": 0.1})
    else:
        assert not store.release(lease, "late")
    if doc["state"] == QUEUED:  # taken again: only the new lease holds it
        again = store.reserve(W1, [A])
        assert again.tid == 1 and again.token != lease.token
        assert not store.heartbeat(lease) and store.heartbeat(again)
    assert _doc(store, 1).get("progress") == {"epoch": 1}


def test_a_retried_report_sends_the_same_point_once(store):
    _queue(store, 1)
    lease = store.reserve(W1, [A])
    assert lease.booked is not None
    assert store.report(lease, 1, 0.5, 1.25)
    assert not store.report(lease, 1, 0.5, 1.25)  # the retry of a write whose reply was lost
    assert store.report(lease, 2, 0.4, 2.5) and store.has_step(lease, 2) and not store.has_step(lease, 3)
    curve = _doc(store, 1)["curve"]
    assert [(p["step"], p["value"], p["t"]) for p in curve] == [(1, 0.5, 1.25), (2, 0.4, 2.5)]
    booked = _doc(store, 1)["book_time"]
    assert curve[0]["at"] == booked + datetime.timedelta(seconds=1.25)  # the same for every retry


# ------------------------------------------------------------------------------------ the view
def _view(url, name="a"):
    coord = Coordinator(url)
    coord.create(Study(name=name, max_evals=50, objective={"kind": "synthetic"}), exist_ok=True)
    study = coord.studies.get(name)
    trials = _StudyTrials(MongoJobs(coord.db, coord.jobs, None, coord.client, None, "spec"), exp_key=study.exp_key,
                          pickle_domain=False, retry=coord.retry, space=resolve_space(study), fence=lambda n: None)
    return coord, study, trials


def _stale(trials):
    trials._synced_at = 0.0  # as after fmin's poll sleep


def test_view_follows_every_transition_of_its_study_only(mongo_url):
    coord, study, trials = _view(mongo_url)
    store = coord.trials
    _queue(store, 0, 1, 2, 3)
    _queue(store, 10, exp_key=B)
    _queue(store, 11, exp_key=B, state=RUNNING)
    _stale(trials)
    trials.refresh()
    assert sorted(d["tid"] for d in trials.trials) == [0, 1, 2, 3]
    done = store.reserve(W1, [A])
    store.finish(done, {"loss": 0.25})
    running = store.reserve(W1, [A])
    store.heartbeat(running, {"epoch": 4})
    store.jobs.update_one({"tid": 2}, {"$set": {"state": ERROR}, "$inc": {"version": 1}})
    store.jobs.delete_one({"tid": 3})
    _stale(trials)
    trials.refresh()
    by_tid = {d["tid"]: d for d in trials.trials}
    assert sorted(by_tid) == [0, 1]  # error and deleted trials leave the view
    assert by_tid[0]["state"] == DONE and by_tid[0]["result"]["loss"] == 0.25
    assert by_tid[1]["lease_token"] == running.token and by_tid[1]["progress"] == {"epoch": 4}
    assert trials.count_by_state_unsynced(ERROR) == 1  # from the database
    trials._full_at = float("-inf")
    trials.refresh_tids(None)  # a full refresh agrees
    assert sorted(d["tid"] for d in trials.trials) == [0, 1]
    coord.close()


def test_inserted_trials_are_in_the_view_as_stored_without_a_read(mongo_url):
    from hyperopt import base, rand

    coord, study, trials = _view(mongo_url)
    domain = base.Domain(lambda p: 0.0, resolve_space(study))
    trials.insert_trial_docs(rand.suggest(trials.new_trial_ids(2), domain, trials, 1))
    assert [d["state"] for d in trials.trials] == [QUEUED, QUEUED]
    assert trials.count_by_state_unsynced(QUEUED) == 2
    assert {d["_id"]: d for d in trials.trials} == {d["_id"]: decode(d) for d in coord.jobs.find()}
    coord.close()


def test_progress_from_the_view_agrees_with_the_database(mongo_url):
    coord, study, trials = _view(mongo_url)
    store = coord.trials
    _queue(store, *range(8))
    _queue(store, 20, exp_key=B, state=DONE, result={"status": "ok", "loss": -9.0})
    results = {0: {"loss": 0.4}, 1: {"loss": 0.3, "pruned": True, "pruned_at": 1}, 2: {"status": "fail"},
               3: {"loss": 0.05, "pruned": True, "pruned_at": 2}, 4: {"loss": 0.2}}
    for tid in range(6):
        lease = store.reserve(W1, [A])
        assert lease.tid == tid
        if tid in results:
            store.finish(lease, results[tid])
    store.heartbeat(lease, {"epoch": 3})  # tid 5 runs on
    store.jobs.update_one({"tid": 6}, {"$set": {"state": ERROR}})
    _stale(trials)
    trials.refresh()
    from_view = snapshot(store, coord.workers, study, view=trials)
    from_db = snapshot(store, coord.workers, study)
    expected = {"queued": 1, "running": 1, "ok": 2, "failed": 1, "pruned": 2, "error": 1}
    assert from_view.counts == from_db.counts == expected
    # the best complete trial, not the better pruned one
    assert (from_view.best_tid, from_view.best_loss, from_view.best_params) == (4, 0.2, {"conv": {"blocks": 2}, "x": 4})
    assert (from_db.best_tid, from_db.best_loss) == (4, 0.2)
    assert [r["tid"] for r in from_view.running] == [r["tid"] for r in from_db.running] == [5]
    assert from_view.running[0]["progress"] == from_db.running[0]["progress"] == {"epoch": 3}
    coord.close()


# ------------------------------------------------------------------------------------ a pruner's reads
def test_curve_reads_see_the_study_as_a_full_read_does(mongo_url):
    coord, study, _ = _view(mongo_url)
    store = coord.trials
    _queue(store, 1, 2, 3, 4)
    _queue(store, 9, exp_key=B)
    other = store.reserve(W1, [B])
    store.report(other, 1, 99.0, 1.0)
    cache = _CurveCache(store, study)

    def run(tid, values, finish=True):
        lease = store.reserve(W1, [A])
        assert lease.tid == tid
        for step, v in enumerate(values, start=1):
            store.report(lease, step, v, float(step))
        if finish:
            store.finish(lease, {"loss": values[-1]})

    run(1, [0.9, 0.8])
    first = cache.read()
    assert {t: (c.values, c.finished) for t, c in first.trials.items()} == {1: ({1: 0.9, 2: 0.8}, True)}
    run(2, [0.7])
    time.sleep(0.01)
    run(3, [0.6, 0.5], finish=False)
    second = cache.read()
    assert {t: (c.values, c.finished) for t, c in second.trials.items()} == {
        1: ({1: 0.9, 2: 0.8}, True), 2: ({1: 0.7}, True), 3: ({1: 0.6, 2: 0.5}, False)}
    coord.close()


def test_curve_reads_keep_the_pruned_flag_and_the_latest_run(mongo_url):
    coord, study, _ = _view(mongo_url)
    store = coord.trials
    _queue(store, 1, 2)
    first = store.reserve(W1, [A])
    store.report(first, 1, 0.9, 1.0)
    store.release(first, "worker shutdown")  # run again: its curve starts again
    again = store.reserve(W1, [A])
    assert again.tid == 1
    store.report(again, 1, 0.4, 1.0)
    store.finish(again, {"loss": 0.4, "pruned": True, "pruned_at": 1})
    running = store.reserve(W1, [A])
    store.report(running, 1, 0.7, 1.0)
    finished, newest = store.finished_curves(A)
    assert [(c.tid, [p["value"] for p in c.points], c.finished, c.pruned) for c in finished] == [(1, [0.4], True, True)]
    assert newest == _doc(store, 1)["refresh_time"]
    assert store.finished_curves(A, newest) == ([], None)  # nothing finished since
    (live,) = store.running_curves(A)
    assert (live.tid, [p["value"] for p in live.points], live.finished, live.pruned) == (2, [0.7], False, False)
    assert store.running_curves(B) == []
    coord.close()


def test_busy_workers_are_read_from_the_running_trials(mongo_url):
    coord, study, _ = _view(mongo_url)
    store = coord.trials
    _queue(store, 1)
    _queue(store, 2, exp_key=B)
    store.reserve(W1, [A])
    store.reserve({**W1, "id": "w2"}, [B])
    assert store.busy_workers() == {"w1", "w2"}
    assert store.busy_workers(besides=A) == {"w2"}  # the coordinator of A counts its own from its view
    assert set(store.active(A)) == {_doc(store, 1)["_id"]} and len(store.active(None)) == 2
    coord.close()
