"""hyperopt 0.3.0's MongoDB integration tests, run against mongotune.store.

The test logic follows hyperopt's BSD-licensed tests (hyperopt/tests/integration/test_mongoexp.py).

What changed is plumbing only:

* hyperopt.mongoexp's classes are replaced by mongotune.store's;
* ``TempMongo`` no longer starts a private ``mongod``: it hands out a fresh
  set of databases on the session's server (``mongo_server`` fixture) and
  drops them again on exit;
* connection strings keep hyperopt's ``mongo://host:port/db/jobs`` form
  (built with ``as_mongo_str``); a few use the standard ``mongodb://`` form;
* workers that run hyperopt's cloudpickled Domain are created with
  ``allow_pickle=True``, since mongotune refuses to unpickle by default
  (``test_worker_refuses_pickled_job_by_default`` checks that refusal);
* threads are joined with a deadline so a broken store fails the test
  instead of hanging it, and workers run in a temporary directory.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
import traceback
import unittest
import urllib.parse
import uuid

import cloudpickle
import numpy as np
import pymongo
import pytest

import hyperopt.tests.test_base
from hyperopt import hp, rand
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_ERROR, JOB_STATE_NEW, STATUS_OK, Domain
from hyperopt.fmin import fmin
from hyperopt.tests.unit.test_domains import gauss_wave2

from mongotune.store import (
    MongoJobs,
    MongoTrials,
    MongoWorker,
    PickleRefused,
    ReserveTimeout,
    as_mongo_str,
    main_worker_helper,
    parse_mongo_url,
    parse_url,
)

THREAD_DEADLINE_S = 90.0


class TempMongo:
    """Context manager standing in for hyperopt's TempMongo.

    hyperopt's version started a throw-away ``mongod``; this one gives each
    instance its own database names on the already running session server
    (so two instances never see each other's data) and drops them on exit.

        with TempMongo(mongo_server) as tm:
            mj = tm.mongo_jobs("test1")
    """

    def __init__(self, server):
        self.server = server
        self.prefix = "ho_" + uuid.uuid4().hex[:10] + "_"
        self._used: set[str] = set()
        scheme, _, rest = server.base.partition("://")
        assert scheme == "mongodb", server.base
        self.netloc = rest.split("/", 1)[0]  # [user:pw@]host:port
        self.query = getattr(server, "query", "")  # only set for an external server

    def __enter__(self):
        if not self.db_up():
            raise RuntimeError("No database connection", self.server.base)
        return self

    def __exit__(self, *args):
        client = pymongo.MongoClient(self.mongodb_url("admin"), serverSelectionTimeoutMS=5000)
        try:
            for name in self._used:
                client.drop_database(name)
        finally:
            client.close()

    def dbname(self, name: str) -> str:
        full = self.prefix + name
        self._used.add(full)
        return full

    def connection_string(self, dbname: str) -> str:
        """hyperopt's form: ``mongo://[user:pw@]host:port/<db>/jobs``."""
        return as_mongo_str(f"{self.netloc}/{self.dbname(dbname)}/jobs") + self.query

    def mongodb_url(self, dbname: str) -> str:
        """The standard form: ``mongodb://[user:pw@]host:port/<db>``."""
        name = dbname if dbname == "admin" else self.dbname(dbname)
        return f"mongodb://{self.netloc}/{name}{self.query}"

    def mongo_jobs(self, dbname: str) -> MongoJobs:
        return MongoJobs.new_from_connection_str(self.connection_string(dbname))

    def db_up(self) -> bool:
        try:
            self.mongo_jobs("__test_db")
            return True
        except Exception:
            return False


@pytest.fixture
def temp_mongo(mongo_server):
    with TempMongo(mongo_server) as tm:
        yield tm


@pytest.fixture
def trials(temp_mongo):
    """hyperopt's ``with_mongo_trials`` decorator, as a fixture."""
    trials = MongoTrials(temp_mongo.connection_string("foo"), exp_key=None)
    print("Length of trials: ", len(trials.results))
    return trials


@pytest.fixture
def in_tmp_dir(tmp_path, monkeypatch):
    """Workers chdir into a relative workdir; keep that out of the checkout."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _join_all(threads, deadline_s=THREAD_DEADLINE_S):
    end = time.monotonic() + deadline_s
    for th in threads:
        th.join(max(0.0, end - time.monotonic()))
    alive = [th.name for th in threads if th.is_alive()]
    assert not alive, f"threads still running after {deadline_s}s: {alive}"


def test_parse_url():
    uris = [
        "mongo://hyperopt:foobar@127.0.0.1:27017/hyperoptdb/jobs",
        "mongo://hyperopt:foobar@127.0.0.1:27017/hyperoptdb/jobs?authSource=db1",
    ]
    expected = [
        ("mongo", "hyperopt", "foobar", "127.0.0.1", 27017, "hyperoptdb", "jobs", None),
        ("mongo", "hyperopt", "foobar", "127.0.0.1", 27017, "hyperoptdb", "jobs", "db1"),
    ]
    for uri, want in zip(uris, expected):
        assert parse_url(uri) == want


class TestMongoTrials(hyperopt.tests.test_base.TestTrials):
    """hyperopt's own Trials unit tests, run on a MongoTrials."""

    @pytest.fixture(autouse=True)
    def _server(self, mongo_server):
        self._mongo_server = mongo_server

    def setUp(self):
        self.temp_mongo = TempMongo(self._mongo_server)
        self.temp_mongo.__enter__()
        self.trials = MongoTrials(self.temp_mongo.connection_string("foo"), exp_key=None)

    def tearDown(self, *args):
        self.temp_mongo.__exit__(*args)


def test_with_temp_mongo(trials):
    pass  # -- just verify that the fixture can run


def test_new_trial_ids(trials):
    a = trials.new_trial_ids(1)
    b = trials.new_trial_ids(2)
    c = trials.new_trial_ids(3)

    assert len(a) == 1
    assert len(b) == 2
    assert len(c) == 3
    s = set()
    s.update(a)
    s.update(b)
    s.update(c)
    assert len(s) == 6


def test_attachments(trials):
    blob = b"abcde"
    assert "aname" not in trials.attachments
    trials.attachments["aname"] = blob
    assert "aname" in trials.attachments
    assert trials.attachments["aname"] == blob
    assert trials.attachments["aname"] == blob

    blob2 = b"zzz"
    trials.attachments["aname"] = blob2
    assert "aname" in trials.attachments
    assert trials.attachments["aname"] == blob2
    assert trials.attachments["aname"] == blob2

    del trials.attachments["aname"]
    assert "aname" not in trials.attachments


def test_delete_all_on_attachments(trials):
    trials.attachments["aname"] = "a"
    trials.attachments["aname2"] = "b"
    assert "aname2" in trials.attachments
    trials.delete_all()
    assert "aname" not in trials.attachments
    assert "aname2" not in trials.attachments


def test_handles_are_independent(mongo_server):
    with TempMongo(mongo_server) as tm:
        t1 = tm.mongo_jobs("t1")
        # -- the standard mongodb:// form names the same kind of handle
        t2 = MongoJobs.new_from_connection_str(tm.mongodb_url("t2"))
        assert len(t1) == 0
        assert len(t2) == 0

        # test that inserting into t1 doesn't affect t2
        t1.insert({"a": 7})
        assert len(t1) == 1
        assert len(t2) == 0


def passthrough(x):
    assert os.path.split(os.getcwd()).count("mongoexp_test_dir") == 1, "cwd is %s" % os.getcwd()
    return x


class TestExperimentWithThreads(unittest.TestCase):
    @pytest.fixture(autouse=True)
    def _plumbing(self, mongo_server, in_tmp_dir):
        self._mongo_server = mongo_server

    @staticmethod
    def worker_thread_fn(tm, host_id, n_jobs, timeout):
        mw = MongoWorker(
            mj=tm.mongo_jobs("foodb"),
            logfilename=None,
            workdir="mongoexp_test_dir",
            allow_pickle=True,
        )
        while n_jobs:
            mw.run_one(host_id, timeout, erase_created_workdir=True)
            print("worker: %s ran job" % str(host_id))
            n_jobs -= 1

    @staticmethod
    def fmin_thread_fn(space, trials, max_evals, seed):
        fmin(
            fn=passthrough,
            space=space,
            algo=rand.suggest,
            trials=trials,
            rstate=np.random.default_rng(seed),
            max_evals=max_evals,
            return_argmin=False,
        )

    @pytest.mark.timeout(180)
    def test_seeds_AAB(self):
        # launch 3 simultaneous experiments with seeds A, A, B.
        # Verify all experiments run to completion.
        # Verify first two experiments run identically.
        # Verify third experiment runs differently.

        exp_keys = ["A0", "A1", "B"]
        seeds = [1, 1, 2]
        n_workers = 2
        jobs_per_thread = 6
        # -- total jobs = 2 * 6 = 12
        # -- divided by 3 experiments: 4 jobs per fmin
        max_evals = (n_workers * jobs_per_thread) // len(exp_keys)

        # -- should not matter which domain is used here
        domain = gauss_wave2()

        pickle.dumps(domain.expr)
        pickle.dumps(passthrough)

        with TempMongo(self._mongo_server) as tm:
            worker_threads = [
                threading.Thread(
                    target=TestExperimentWithThreads.worker_thread_fn,
                    args=(tm, ("hostname", ii), jobs_per_thread, 30.0),
                    name=f"worker-{ii}",
                    daemon=True,
                )
                for ii in range(n_workers)
            ]
            mj = tm.mongo_jobs("foodb")
            print(mj)
            trials_list = [MongoTrials(tm.connection_string("foodb"), key) for key in exp_keys]

            fmin_threads = [
                threading.Thread(
                    target=TestExperimentWithThreads.fmin_thread_fn,
                    args=(domain.expr, trials, max_evals, seed),
                    name=f"fmin-{trials._exp_key}",
                    daemon=True,
                )
                for seed, trials in zip(seeds, trials_list)
            ]

            try:
                [th.start() for th in worker_threads + fmin_threads]
            finally:
                print("joining worker threads...")
                try:
                    _join_all(worker_threads + fmin_threads)
                except AssertionError:
                    for trials in trials_list:  # let stuck fmin loops give up
                        trials._fmin_cancelled = True
                    raise

            # -- not using an exp_key gives a handle to all the trials
            #    in foodb
            all_trials = MongoTrials(tm.connection_string("foodb"))
            self.assertEqual(len(all_trials), n_workers * jobs_per_thread)

            # Verify that the fmin calls terminated correctly:
            for trials in trials_list:
                self.assertEqual(trials.count_by_state_synced(JOB_STATE_DONE), max_evals)
                self.assertEqual(trials.count_by_state_unsynced(JOB_STATE_DONE), max_evals)
                self.assertEqual(len(trials), max_evals)

            # Verify that the first two experiments match.
            trials_A0, trials_A1, trials_B0 = trials_list
            self.assertEqual(
                [t["misc"]["vals"] for t in trials_A0.trials],
                [t["misc"]["vals"] for t in trials_A1.trials],
            )

            # Verify that the last experiment does not match.
            self.assertNotEqual(
                [t["misc"]["vals"] for t in trials_A0.trials],
                [t["misc"]["vals"] for t in trials_B0.trials],
            )


def objective_with_attachments(x: float):
    """Objective function that includes extra information as attachments and
    dictionary attributes."""
    return {
        "loss": x**2,
        "status": STATUS_OK,
        "extra_stuff": {"type": None, "value": [0, 1, 2]},
        "attachments": {"time": pickle.dumps(time.time)},
    }


def fmin_thread_fn(space, mongo_trials: MongoTrials, max_evals: int):
    fmin(
        fn=objective_with_attachments,
        space=space,
        algo=rand.suggest,
        trials=mongo_trials,
        rstate=np.random.default_rng(),
        max_evals=max_evals,
        return_argmin=False,
    )


@pytest.mark.timeout(120)
def test_trial_attachments(mongo_server, in_tmp_dir):
    exp_key = "A"
    with TempMongo(mongo_server) as tm:
        mj = tm.mongo_jobs("foo")
        trials = MongoTrials(tm.connection_string("foo"), exp_key=exp_key)

        space = hp.uniform("x", -10, 10)
        max_evals = 3
        fmin_thread = threading.Thread(
            target=fmin_thread_fn, args=(space, trials, max_evals), name="fmin", daemon=True
        )
        fmin_thread.start()

        mw = MongoWorker(mj=mj, logfilename=None, workdir="mongoexp_test_dir", allow_pickle=True)
        n_jobs = max_evals
        while n_jobs:
            try:
                mw.run_one("hostname", 10.0, erase_created_workdir=True)
                print("worker: ran job")
            except Exception as exc:
                print(f"worker: encountered error : {str(exc)}")
                traceback.print_exc()
            n_jobs -= 1
        _join_all([fmin_thread])
        all_trials = MongoTrials(tm.connection_string("foo"))

        assert len(all_trials) == max_evals
        assert trials.count_by_state_synced(JOB_STATE_DONE) == max_evals
        assert trials.count_by_state_unsynced(JOB_STATE_DONE) == max_evals


# -- mongotune addition: hyperopt's workers unpickle whatever the database
#    holds; mongotune's refuse unless allow_pickle=True is given.

OBJECTIVE_CALLS: list[float] = []


def recording_objective(x):
    OBJECTIVE_CALLS.append(x)
    return {"loss": x, "status": STATUS_OK}


def test_worker_refuses_pickled_job_by_default(temp_mongo, in_tmp_dir, monkeypatch):
    unpickled = []
    real_loads = cloudpickle.loads

    def spying_loads(*args, **kwargs):
        unpickled.append(args)
        return real_loads(*args, **kwargs)

    monkeypatch.setattr(cloudpickle, "loads", spying_loads)
    OBJECTIVE_CALLS.clear()

    # -- queue two jobs exactly as fmin does: a pickled Domain attachment
    #    and trials whose cmd is ("domain_attachment", "FMinIter_Domain")
    trials = MongoTrials(temp_mongo.connection_string("foo"), exp_key="E")
    domain = Domain(recording_objective, hp.uniform("x", 0, 1))
    trials.attachments["FMinIter_Domain"] = cloudpickle.dumps(domain)
    docs = rand.suggest(trials.new_trial_ids(2), domain, trials, 7)
    assert [d["misc"]["cmd"] for d in docs] == [("domain_attachment", "FMinIter_Domain")] * 2
    trials.insert_trial_docs(docs)
    trials.refresh()
    first_tid = min(t["tid"] for t in trials.trials)

    mj = temp_mongo.mongo_jobs("foo")
    refusing = MongoWorker(mj=mj, logfilename=None, workdir="mongoexp_test_dir")
    with pytest.raises(PickleRefused) as info:
        refusing.run_one("hostname", 10.0, erase_created_workdir=True)
    message = str(info.value)
    assert "\n" not in message
    assert "domain_attachment" in message and "allow_pickle=True" in message

    # -- nothing was unpickled, nothing ran, and the job is marked as an error
    assert unpickled == []
    assert OBJECTIVE_CALLS == []
    refused = mj.jobs.find_one({"tid": first_tid})
    assert refused["state"] == JOB_STATE_ERROR
    assert "allow_pickle" in refused["error"][1]
    assert mj.jobs.count_documents({"state": JOB_STATE_NEW}) == 1

    # -- control: the same kind of job runs once pickles are allowed
    allowing = MongoWorker(mj=mj, logfilename=None, workdir="mongoexp_test_dir", allow_pickle=True)
    allowing.run_one("hostname", 10.0, erase_created_workdir=True)
    assert len(unpickled) == 1
    assert len(OBJECTIVE_CALLS) == 1
    trials.refresh()
    assert trials.count_by_state_synced(JOB_STATE_DONE) == 1
    assert trials.count_by_state_unsynced(JOB_STATE_ERROR) == 1
    assert trials.losses() == OBJECTIVE_CALLS


class FakeOptions:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


@pytest.fixture
def keep_signal_handlers():
    """main_worker_helper installs SIGINT/SIGTERM/SIGHUP handlers; undo that."""
    sigs = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    saved = {s: signal.getsignal(s) for s in sigs}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def _one_job_options(mongo: str) -> FakeOptions:
    """hyperopt-mongo-worker's options for one job with a 1 s reserve timeout on exp_key 'foo'."""
    return FakeOptions(max_jobs=1, mongo=mongo, reserve_timeout=1, poll_interval=0.5, workdir=None,
                       exp_key="foo", last_job_timeout=None, allow_pickle=True)


# -- assert that the test raises a ReserveTimeout within 5 seconds
@pytest.mark.timeout(10)  # XXX:  this needs a suspiciously long timeout
def test_main_worker(trials, temp_mongo, keep_signal_handlers):
    with pytest.raises(ReserveTimeout):
        # -- the standard URL form; main_worker_helper adds the /jobs
        options = _one_job_options(as_mongo_str(temp_mongo.mongodb_url("foodb")))
        # -- check that it runs
        #    and that the reserve timeout is respected
        main_worker_helper(options, ())


@pytest.mark.timeout(10)
@pytest.mark.filterwarnings("error::UserWarning")  # pymongo warns about a mangled option
def test_main_worker_mongodb_url_with_options(temp_mongo, keep_signal_handlers, monkeypatch):
    # -- mongotune addition: a URL carrying options (as any authenticated
    #    mongodb:// URL does) must reach the jobs collection with its options intact.
    url = temp_mongo.mongodb_url("foodb")
    url += ("&" if "?" in url else "?") + "connectTimeoutMS=4000"
    opened = []
    real_new = MongoJobs.new_from_connection_str.__func__

    def spying_new(cls, conn_str, *args, **kwargs):
        opened.append(conn_str)
        return real_new(cls, conn_str, *args, **kwargs)

    monkeypatch.setattr(MongoJobs, "new_from_connection_str", classmethod(spying_new))
    options = _one_job_options(url)
    with pytest.raises(ReserveTimeout):
        main_worker_helper(options, ())
    assert opened, "main_worker_helper never opened the jobs collection"
    for conn_str in opened:
        parsed = parse_mongo_url(conn_str)
        assert parsed.database == temp_mongo.prefix + "foodb"
        assert parsed.collection == "jobs"
        query = urllib.parse.parse_qs(parsed.client_uri.partition("?")[2])
        assert query.get("connectTimeoutMS") == ["4000"], parsed.redacted
