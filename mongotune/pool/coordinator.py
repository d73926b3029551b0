"""The coordinator: hyperopt's fmin machinery driving a study through MongoDB.

It is the "oracle" half of mongotune: it decides what to try next (hyperopt's
``FMinIter`` with ``tpe``/``rand``/``anneal``) and writes trials into the
jobs collection; workers (``mongotune.worker``) train them.  What it adds to
stock hyperopt:

* trials carry their concrete, evaluated ``params`` and ``study`` name, so a
  worker needs neither the search space nor any pickled code;
* the queue length follows the live workers (idle workers + ``queue_spare``),
  so TPE sees fresh results but no GPU waits for a suggestion;
* while fmin polls, expired leases are requeued, so a dead worker never
  leaves fmin "waiting for jobs" forever;
* ``resume`` tops a study up to exactly ``max_evals`` trials, failed ones
  included, and never re-runs a finished trial.
"""

from __future__ import annotations

import datetime
import functools
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import gridfs
import numpy as np
from hyperopt import anneal, base, rand, tpe
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_ERROR, JOB_STATE_NEW, JOB_STATE_RUNNING
from hyperopt.fmin import FMinIter, space_eval

from ..store import trialdoc as leases
from ..search import spaces
from ..errors import ConfigError
from ..store import MongoJobs, MongoTrials, RetryPolicy, decode, open_client
from ..store.studies import Study, StudyStore, spare_for

log = logging.getLogger("mongotune.coordinator")

ALGORITHMS = {"tpe": tpe.suggest, "rand": rand.suggest, "anneal": anneal.suggest}
WORKER_LIVE_S = 20.0


def _algorithm(study: Study):
    """The study's suggest function, with its TPE start-up length when it sets one."""
    algo = ALGORITHMS[study.algo]
    if study.algo == "tpe" and study.startup_trials is not None:
        return functools.partial(algo, n_startup_jobs=study.startup_trials)
    return algo


NATIVE_SHAPES = {
    "digits": (8, 8, 1),
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
    "cifar100": (32, 32, 3),
}

DEFAULT_SYNTHETIC_SPACE = {"x": {"hp": "uniform", "low": -1.0, "high": 1.0}}


def input_shape_of(dataset: dict) -> tuple[int, int, int]:
    """Image shape a study's dataset will have, without loading it when possible."""
    name = dataset.get("name")
    if name in NATIVE_SHAPES:
        h, w, c = NATIVE_SHAPES[name]
        size = dataset.get("size")
        channels = dataset.get("channels")
        return (int(size or h), int(size or w), int(channels or c))
    from ..data import DataSpec, load

    return tuple(load(DataSpec.from_dict(dataset)).input_shape)


def resolve_space(study: Study):
    """The hyperopt space of a study (its JSON space, or the model's own)."""
    if study.space is not None:
        return spaces.build(study.space)
    if study.objective != "keras":
        return spaces.build(DEFAULT_SYNTHETIC_SPACE)
    from ..models import get_model

    return get_model(study.model).space(input_shape_of(study.dataset), augment=study.augment)


def _never_called(params):  # the workers evaluate trials, not the coordinator
    raise RuntimeError("mongotune's coordinator does not evaluate trials itself")


@dataclass
class Snapshot:
    """A study's progress at one moment (what ``status`` and ``launch`` show)."""

    name: str
    max_evals: int
    counts: dict = field(default_factory=dict)  # queued, running, ok, failed, error
    best_loss: float | None = None
    best_params: dict | None = None
    best_tid: int | None = None
    running: list = field(default_factory=list)  # [{tid, worker, gpu, heartbeat_age_s, progress}]
    live_workers: int = 0
    elapsed_s: float = 0.0

    @property
    def finished(self) -> int:
        return self.counts.get("ok", 0) + self.counts.get("failed", 0) + self.counts.get("error", 0)


def snapshot(db, study: Study, jobs=None, started: float | None = None) -> Snapshot:
    jobs = jobs if jobs is not None else db.jobs
    q = {"exp_key": study.exp_key}
    counts = {"queued": 0, "running": 0, "ok": 0, "failed": 0, "error": 0}
    for row in jobs.aggregate([{"$match": q}, {"$group": {"_id": {"s": "$state", "r": "$result.status"},
                                                          "n": {"$sum": 1}}}]):
        state, status = row["_id"].get("s"), row["_id"].get("r")
        key = {JOB_STATE_NEW: "queued", JOB_STATE_RUNNING: "running", JOB_STATE_ERROR: "error"}.get(state)
        if state == JOB_STATE_DONE:
            key = "ok" if status == "ok" else "failed"
        if key:
            counts[key] += row["n"]
    best = None
    for doc in jobs.find({**q, "state": JOB_STATE_DONE, "result.status": "ok"},
                         projection=["tid", "result.loss", "params"]):
        doc = decode(doc)
        loss = doc["result"].get("loss")
        if isinstance(loss, (int, float)) and math.isfinite(loss) and (best is None or loss < best["result"]["loss"]):
            best = doc
    now = leases.server_now(db)
    running = []
    for doc in jobs.find({**q, "state": JOB_STATE_RUNNING},
                         projection=["tid", "worker", "refresh_time", "progress", "attempts"]).sort("tid", 1):
        age = (now - doc["refresh_time"]).total_seconds() if doc.get("refresh_time") else None
        w = doc.get("worker") or {}
        running.append({"tid": doc.get("tid"), "worker": w.get("id"), "gpu": w.get("gpu"),
                        "heartbeat_age_s": age, "progress": decode(doc.get("progress")),
                        "attempt": int(doc.get("attempts") or 0) + 1})
    live = live_workers(db, study.name)
    return Snapshot(study.name, study.max_evals, counts,
                    best["result"]["loss"] if best else None, best.get("params") if best else None,
                    best.get("tid") if best else None, running, len(live),
                    time.monotonic() - started if started else 0.0)


def live_workers(db, study_name: str | None = None, now: datetime.datetime | None = None) -> list[dict]:
    """Workers whose own heartbeat is recent, optionally those serving one study."""
    now = now or leases.server_now(db)
    cutoff = now - datetime.timedelta(seconds=WORKER_LIVE_S)
    q = {"heartbeat": {"$gte": cutoff}, "status": {"$ne": "stopped"}}
    rows = list(db.workers.find(q))
    if study_name is not None:
        rows = [w for w in rows if w.get("study") in (None, study_name)]
    return rows


class _StudyTrials(MongoTrials):
    """MongoTrials that stamps each new trial with its study and evaluated params.

    It also refreshes incrementally.  fmin refreshes its trials three or four
    times per suggestion and counts the finished ones every poll; reading the
    versions of every trial each time costs O(trials) per poll (on the embedded
    server, ~0.2 ms of server CPU per trial document), so a 1000-trial study
    spent seconds per suggestion there.  A finished (``DONE``) trial never
    changes again in mongotune (leases, requeues and results only ever update
    ``NEW``/``RUNNING`` trials), so between full refreshes only the queued and
    running trials, and those that were queued or running last time, are read.
    A full refresh still runs every ``full_refresh_s`` seconds as a safety net.
    """

    full_refresh_s = 30.0
    fresh_s = 0.05  # counts within this long of a refresh are read from it (fmin counts 3 times per poll)
    _LOCAL_STATES = (JOB_STATE_NEW, JOB_STATE_RUNNING, JOB_STATE_DONE)

    def __init__(self, *args, study: Study, space, **kwargs):
        self._study = study
        self._space = space
        self._full_at = 0.0
        self._synced_at = 0.0
        super().__init__(*args, **kwargs)

    def refresh_tids(self, tids):
        if tids is not None or not self._by_id or time.monotonic() - self._full_at >= self.full_refresh_s:
            super().refresh_tids(tids)
            if tids is None:
                self._full_at = self._synced_at = time.monotonic()
            return
        self.retry.call(self._refresh_active, "refresh trials")
        self._synced_at = time.monotonic()

    def _refresh_active(self):
        jobs = self.handle.jobs
        query = self._query()
        active = {d["_id"]: d for d in jobs.find(
            {**query, "state": {"$in": [JOB_STATE_NEW, JOB_STATE_RUNNING]}}, projection=["version", "tid"])}
        stale = {i: d.get("tid") for i, d in active.items()
                 if i not in self._by_id or self._by_id[i].get("version", 0) != d.get("version", 0)}
        stale.update({i: d.get("tid") for i, d in self._by_id.items()
                      if d.get("state") in (JOB_STATE_NEW, JOB_STATE_RUNNING) and i not in active})
        self._download(stale, query)
        self._publish()

    def count_by_state_unsynced(self, arg):
        """Counts from the view (refreshed first unless it just was): one query per poll, not four."""
        states = {arg} if isinstance(arg, int) else set(arg)
        if not states or not states <= set(self._LOCAL_STATES):  # error trials are not in the view
            return super().count_by_state_unsynced(arg)
        self._maybe_poll()
        if time.monotonic() - self._synced_at > self.fresh_s:
            self.refresh()
        return sum(1 for d in self._trials if d.get("state") in states)

    def running_workers(self) -> set:
        """Worker ids of this study's running trials, as of the last refresh."""
        return {(d.get("worker") or {}).get("id") for d in self._trials if d.get("state") == JOB_STATE_RUNNING}

    def _insert_trial_docs(self, docs):
        for doc in docs:
            spec = base.spec_from_misc(doc["misc"])
            doc["study"] = self._study.name
            doc["params"] = space_eval(self._space, spec)
            doc["attempts"] = 0
        return super()._insert_trial_docs(docs)


class _PendingView:
    """``trials`` plus suggestions not inserted yet, as the algorithms read them."""

    def __init__(self, trials, pending: list):
        self._trials = trials
        self._pending = pending

    @property
    def trials(self):
        return list(self._trials.trials) + self._pending

    def __len__(self):
        return len(self._trials.trials) + len(self._pending)

    def new_trial_docs(self, *args, **kwargs):
        return self._trials.new_trial_docs(*args, **kwargs)


def _fill_batch(algo):
    """Make ``algo`` return one trial for every new id it is given.

    The elastic queue asks for several trials at once (all the idle workers'),
    but hyperopt's ``tpe.suggest`` returns only the first and ``anneal.suggest``
    refuses more than one id.  The rest are suggested one at a time, each
    seeing the earlier ones as pending (loss unknown), just as fmin's own loop
    would after inserting them, but without a database round trip per trial.
    """

    def suggest(new_ids, domain, trials, seed):
        new_ids = list(new_ids)
        docs = [] if algo is anneal.suggest and len(new_ids) > 1 else list(algo(new_ids, domain, trials, seed))
        for i, new_id in enumerate(new_ids[len(docs):], start=len(docs)):
            got = algo([new_id], domain, _PendingView(trials, docs) if docs else trials, (seed + i) % (2**31 - 1))
            if not got:
                break
            docs.extend(got)
        return docs

    return suggest


class _ElasticFMinIter(FMinIter):
    """hyperopt's FMinIter whose queue length is re-read from a policy each poll."""

    def __init__(self, *args, queue_policy: Callable[[], int], **kwargs):
        self._queue_policy = queue_policy
        super().__init__(*args, **kwargs)

    @property
    def max_queue_len(self):
        return self._queue_policy()

    @max_queue_len.setter
    def max_queue_len(self, value):  # FMinIter.__init__ assigns it; the policy wins
        pass

    def block_until_done(self):
        """hyperopt's wait for unfinished trials, but one that a stop request ends."""
        unfinished = [JOB_STATE_NEW, JOB_STATE_RUNNING]
        while not self.is_cancelled and self.trials.count_by_state_unsynced(unfinished) > 0:
            time.sleep(self.poll_interval_secs)
        self.trials.refresh()


class Coordinator:
    """Create, run, resume and inspect studies in one MongoDB database."""

    def __init__(self, url: str, *, retry: RetryPolicy | None = None, poll_s: float = 0.1):
        self.retry = retry or RetryPolicy()
        self.client, self.db, self.parsed = self.retry.call(lambda: open_client(url), "connect")
        self.url = self.parsed.redacted
        self.jobs = self.db[self.parsed.collection]
        self.studies = StudyStore(self.db)
        self.poll_s = poll_s
        self.retry.call(self._ensure_indexes, "create indexes")

    def _ensure_indexes(self):
        self.db.studies.create_index("created")
        self.jobs.create_index([("study", 1), ("state", 1), ("tid", 1)])
        self.jobs.create_index([("exp_key", 1), ("state", 1)])
        self.db.workers.create_index("heartbeat")

    def close(self):
        self.client.close()

    # ------------------------------------------------------------ studies
    def create(self, study: Study, *, exist_ok: bool = False) -> Study:
        resolve_space(study)  # a bad model/space fails here, before anything is written
        return self.retry.call(lambda: self.studies.create(study, exist_ok=exist_ok), "create study")

    def snapshot(self, name: str, started: float | None = None) -> Snapshot:
        study = self.studies.get(name)
        return self.retry.call(lambda: snapshot(self.db, study, self.jobs, started), "read progress")

    def requeue(self, name: str, tid: int | None = None) -> list[int]:
        """Operator action: put running (or one chosen) trials back in the queue."""
        study = self.studies.get(name)
        q = {"exp_key": study.exp_key, "state": JOB_STATE_RUNNING}
        if tid is not None:
            q = {"exp_key": study.exp_key, "tid": tid, "state": {"$in": [JOB_STATE_RUNNING, JOB_STATE_ERROR]}}
            if self.jobs.count_documents(q) == 0:
                raise ConfigError(f"study {name!r} has no running or errored trial {tid}")
        tids = []
        for doc in self.jobs.find(q, projection=["tid", "lease_token", "state"]):
            res = self.jobs.update_one(
                {"_id": doc["_id"], "state": doc["state"], "lease_token": doc.get("lease_token")},
                {"$set": {"state": JOB_STATE_NEW, "owner": None, "lease_token": None, "book_time": None,
                          "worker": None},
                 "$push": {"requeues": {"reason": "operator"}}, "$inc": {"version": 1}},
            )
            if res.matched_count:
                tids.append(doc["tid"])
        return tids

    # ------------------------------------------------------------ running
    def _queue_target(self, study: Study, cache: dict, trials: _StudyTrials) -> int:
        """Idle workers + ``queue_spare`` (default: a third of the live workers, at least 1).

        The live workers, and the workers busy with other studies, are re-read
        every 0.5 s; this study's busy workers come from fmin's own view of the
        trials, which it refreshes every poll, so that when several workers
        finish at once the queue grows at the next poll, not up to 0.5 s later.
        """
        now = time.monotonic()
        if now - cache.get("t", 0.0) > 0.5:
            try:
                live = live_workers(self.db, study.name)
                # a worker's own document lags its reservation by up to one
                # heartbeat, so busy workers are read from the running trials
                running = self.jobs.find({"state": JOB_STATE_RUNNING}, projection=["worker.id", "exp_key"])
                cache["live"] = [w["_id"] for w in live]
                cache["busy"] = {(d.get("worker") or {}).get("id") for d in running
                                 if d.get("exp_key") != study.exp_key}
            except Exception:  # noqa: BLE001 - keep the last answer while the server is away
                cache.setdefault("live", [])
                cache.setdefault("busy", set())
            cache["t"] = now
        busy = cache["busy"] | trials.running_workers()
        idle = sum(1 for w in cache["live"] if w not in busy)
        spare = study.queue_spare if study.queue_spare is not None else spare_for(len(cache["live"]))
        return max(1, idle + spare)

    def run(self, name: str, *, progress: Callable[[Snapshot], None] | None = None,
            stop: threading.Event | None = None, progress_every_s: float = 0.5) -> Snapshot:
        """Run (or resume) a study until it has ``max_evals`` finished trials.

        ``stop`` ends the run early (the study is left resumable).
        """
        study = self.studies.get(name)
        space = resolve_space(study)
        started = time.monotonic()
        reap_every = max(0.5, min(5.0, study.lease_s / 4.0))
        state = {"reap": 0.0, "progress": 0.0}

        def on_poll(trials):
            now = time.monotonic()
            if now - state["reap"] >= reap_every:
                state["reap"] = now
                self.retry.call(lambda: leases.requeue_expired(
                    self.db, self.jobs, {study.exp_key: (study.lease_s, study.max_attempts)}), "requeue expired trials")
            if progress and now - state["progress"] >= progress_every_s:
                state["progress"] = now
                progress(self.retry.call(lambda: snapshot(self.db, study, self.jobs, started), "read progress"))
            if stop is not None and stop.is_set():
                trials._fmin_cancelled = True

        handle = MongoJobs(self.db, self.jobs, gridfs.GridFS(self.db), self.client, None, "spec", retry=self.retry)
        trials = _StudyTrials(handle, exp_key=study.exp_key, pickle_domain=False, on_poll=on_poll,
                              poll_every_s=0.0, retry=self.retry, study=study, space=space)
        n_existing = self.retry.call(lambda: self.jobs.count_documents({"exp_key": study.exp_key}), "count")
        remaining = max(0, study.max_evals - n_existing)
        self.studies.update(name, status="running")
        queue_cache: dict = {}
        domain = base.Domain(_never_called, space)
        it = _ElasticFMinIter(
            _fill_batch(_algorithm(study)), domain, trials, rstate=np.random.default_rng(study.seed + n_existing),
            max_evals=study.max_evals, poll_interval_secs=self.poll_s, verbose=False, show_progressbar=False,
            queue_policy=lambda: self._queue_target(study, queue_cache, trials),
        )
        log.info("study %s: %d trials exist, queuing %d more (%s)", name, n_existing, remaining, study.algo)
        try:
            it.run(remaining, block_until_done=True)
        finally:
            snap = self.retry.call(lambda: snapshot(self.db, study, self.jobs, started), "read progress")
            complete = snap.finished >= study.max_evals and not snap.counts["queued"] and not snap.counts["running"]
            best = None
            if snap.best_loss is not None:
                best = {"tid": snap.best_tid, "loss": snap.best_loss, "params": snap.best_params}
            self.retry.call(lambda: self.studies.update(name, status="done" if complete else "interrupted",
                                                        best=best), "update study")
            if progress:
                progress(snap)
        return snap
