"""The coordinator: hyperopt's fmin driving a study through MongoDB.

It is the "oracle" half of mongotune: it decides what to try next (hyperopt's
``FMinIter`` with the study's search algorithm) and writes trials into the
jobs collection; workers (``mongotune.pool.worker``) train them.  What it adds
to stock hyperopt:

* trials carry their concrete, evaluated ``params`` (stamped by the trial
  document module), so a worker needs neither the search space nor any
  pickled code; the space itself is JSON in the study, so resuming needs
  neither TensorFlow nor the dataset;
* a study has at most one live coordinator: it holds a lease on the study
  document, and raises the study's created-trials count under that lease
  before inserting, so no interleaving of coordinators exceeds the budget;
* the queue length follows the live workers (idle workers + ``queue_spare``),
  so the search sees fresh results but no GPU waits for a suggestion;
* while fmin polls, expired leases are requeued, so a dead worker never
  leaves fmin "waiting for jobs" forever;
* a database outage pauses the run (with a log line saying so) instead of
  ending it;
* ``resume`` tops a study up to exactly ``max_evals`` trials, failed and
  pruned ones included, and never re-runs a finished trial.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Callable

import gridfs
import numpy as np
from hyperopt import base
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_NEW, JOB_STATE_RUNNING
from hyperopt.fmin import FMinIter, space_eval

from ..errors import ConfigError, MongotuneError
from ..objectives import objective_kind
from ..search import spaces
from ..search.batch import fill_batch
from ..store import MongoTrials, RetryPolicy, decode, encode, open_client
from ..store._connection import FOREVER
from ..store.studies import COORDINATOR_LEASE_S, Study, StudyBusy, StudyStore, holder_info, spare_for
from ..store.progress import Snapshot, snapshot
from ..store.trialdoc import TrialStore
from ..store.workers import WorkerRegistry

log = logging.getLogger("mongotune.coordinator")


class CoordinatorLost(MongotuneError):
    """Another coordinator took the study over (this one was cut off longer than its lease)."""


def suggest_for(study: Study, space=None):
    """The study's suggest function with its options (``study.search``), checked against its space."""
    from ..search.algorithms import from_search

    search = dict(study.search)
    if search.get("fidelity") == "rung":  # the model reads the curves: they go the study's way
        search["goal"] = study.goal
    if len(study.objectives) > 1:  # several objectives: the search models each (results hold ``losses``)
        search.setdefault("objectives", len(study.objectives))
    return from_search(search, space=space)


def resolve_space(study: Study):
    """The hyperopt space of a study, from its stored JSON (studies written before the space was
    stored fall back to their kind's own space: a Keras model's needs the model code)."""
    return spaces.build(objective_kind(study).space(study))


def _never_called(params):  # the workers evaluate trials, not the coordinator
    raise RuntimeError("mongotune's coordinator does not evaluate trials itself")


class _StudyTrials(MongoTrials):
    """MongoTrials that stamps each new trial with its evaluated params, behind the budget fence.

    It also refreshes incrementally.  fmin refreshes its trials three or four
    times per suggestion and counts the finished ones every poll; reading the
    versions of every trial each time costs O(trials) per poll (on the embedded
    server, ~0.2 ms of server CPU per trial document), so a 1000-trial study
    spent seconds per suggestion there.  A finished (``DONE``) trial never
    changes again (see ``store.trialdoc``), so between full refreshes only the
    queued and running trials, and those that were queued or running last
    time, are read.  A full refresh still runs every ``full_refresh_s``
    seconds as a safety net.
    """

    full_refresh_s = 30.0
    fresh_s = 0.05  # counts within this long of a refresh are read from it (fmin counts 3 times per poll)
    _LOCAL_STATES = (JOB_STATE_NEW, JOB_STATE_RUNNING, JOB_STATE_DONE)

    def __init__(self, *args, space, fence: Callable[[int], None], **kwargs):
        self._space = space
        self._fence = fence
        self._full_at = 0.0
        self._synced_at = 0.0
        super().__init__(*args, **kwargs)
        self._store = TrialStore.of(self.handle)

    def refresh_tids(self, tids):
        if tids is not None or not self._by_id or time.monotonic() - self._full_at >= self.full_refresh_s:
            super().refresh_tids(tids)
            if tids is None:
                self._full_at = self._synced_at = time.monotonic()
            return
        self.retry.call(self._refresh_active, "refresh trials")
        self._synced_at = time.monotonic()

    def refresh(self):
        """Sync the view, unless it was synced within ``fresh_s``.

        fmin refreshes three times within a few milliseconds when it suggests
        (before the suggestion, after inserting it, at the next count); the
        trials it inserted are put in the view by ``_insert_trial_docs``, so one
        read per poll is enough.
        """
        if self._by_id and time.monotonic() - self._synced_at <= self.fresh_s:
            return
        self.refresh_tids(None)

    def _refresh_active(self):
        """One read of the queued and running trials, whole (they are few), then the trials that
        left those states since the last read (``_download``: one ``find_one`` by ``_id`` each).

        The filter is the state alone and the study is checked here: on the embedded server
        every field of a filter costs full-collection probes after each write.  The trials
        read replace the view's (heartbeats and curve points change a running trial without
        changing its version), so progress can be shown from the view.
        """
        query = self._query()
        active_states = [JOB_STATE_NEW, JOB_STATE_RUNNING]
        active = self._store.active(self._exp_key)
        for i, d in active.items():
            self._by_id[i] = decode(d)
        left = {i: d.get("tid") for i, d in self._by_id.items()
                if d.get("state") in active_states and i not in active}
        self._download(left, query)
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
        if not docs:
            return []
        self._fence(len(docs))
        for doc in docs:
            TrialStore.stamp(doc, space_eval(self._space, base.spec_from_misc(doc["misc"])))
        inserted = super()._insert_trial_docs(docs)
        for doc in inserted:  # as stored (tuples become lists...): the view has them without a read
            self._by_id[doc["_id"]] = decode(encode(doc))
        self._publish()
        return inserted


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


class _LeaseKeeper(threading.Thread):
    """Heartbeats the coordinator's lease on its study; notices when it was taken over."""

    def __init__(self, studies: StudyStore, name: str, token: str, every_s: float):
        super().__init__(name="mongotune-coordinator-lease", daemon=True)
        self.studies, self.study, self.token, self.every_s = studies, name, token, every_s
        self.halt = threading.Event()
        self.lost = threading.Event()

    def run(self):
        while not self.halt.wait(self.every_s):
            try:
                if not self.studies.beat_coordinator(self.study, self.token):
                    log.error("study %s: another coordinator took over; stopping this one", self.study)
                    self.lost.set()
                    return
            except Exception as exc:  # noqa: BLE001 - the database may be away; the fence still guards
                log.warning("study %s: coordinator heartbeat failed (%s); retrying", self.study, type(exc).__name__)


class _StudyRun:
    """One run of one study by one coordinator, under the study's coordinator lease (``Coordinator.run``):
    fmin with the study's algorithm, its trials behind the budget fence, expired leases reaped while it
    polls, progress shown, and the study's status and best trial recorded at the end."""

    def __init__(self, coord: "Coordinator", study: Study, token: str, keeper: _LeaseKeeper, *,
                 progress: Callable[[Snapshot], None] | None, stop: threading.Event | None, progress_every_s: float):
        self.coord, self.study, self.token, self.keeper = coord, study, token, keeper
        self.progress, self.stop, self.progress_every_s = progress, stop, progress_every_s
        self.retry = FOREVER
        self.started = time.monotonic()
        self.reap_every = max(0.5, min(5.0, study.lease_s / 4.0))
        self.reaped_at = self.shown_at = 0.0

    def _claim(self, n: int) -> bool:
        s = self.study
        return self.retry.call(lambda: self.coord.studies.claim_trials(s.name, self.token, n, s.max_evals),
                               "claim trials")

    def fence(self, n: int) -> None:
        """Before inserting ``n`` trials: still the study's coordinator, and within budget?"""
        studies, name, token, retry = self.coord.studies, self.study.name, self.token, self.retry
        if not self.keeper.lost.is_set() and self._claim(n):
            return
        if self.keeper.lost.is_set() or not retry.call(lambda: studies.beat_coordinator(name, token),
                                                       "check the study lease"):
            raise CoordinatorLost(f"study {name!r} was taken over by another coordinator")
        # the count may be ahead of the documents (a retried increment whose reply was lost):
        # as the only coordinator, re-count what exists and try once more
        existing = retry.call(lambda: self.coord.trials.count(self.study.exp_key), "count trials")
        if existing + n <= self.study.max_evals and retry.call(
                lambda: studies.reset_created(name, token, existing), "reset the trial count") and self._claim(n):
            return
        raise CoordinatorLost(f"study {name!r} already has its {self.study.max_evals} trials")

    def on_poll(self, trials: _StudyTrials) -> None:
        """While fmin polls: reap expired leases, show progress, and end the run when asked or taken over."""
        c, study, now = self.coord, self.study, time.monotonic()
        if now - self.reaped_at >= self.reap_every:
            self.reaped_at = now
            self.retry.call(lambda: c.trials.expire({study.exp_key: (study.lease_s, study.max_attempts)}),
                            "requeue expired trials")
        if self.progress and now - self.shown_at >= self.progress_every_s:
            self.shown_at = now
            self.progress(self.retry.call(lambda: snapshot(c.trials, c.workers, study, self.started, view=trials),
                                          "read progress"))
        if (self.stop is not None and self.stop.is_set()) or self.keeper.lost.is_set():
            trials._fmin_cancelled = True

    def drive(self, space, suggest) -> CoordinatorLost | None:
        """Queue the study's missing trials and wait for them; the CoordinatorLost that ended it, if any."""
        c, study, retry, name = self.coord, self.study, self.retry, self.study.name
        n_existing = retry.call(lambda: c.trials.count(study.exp_key), "count trials")
        retry.call(lambda: c.studies.reset_created(name, self.token, n_existing), "reset the trial count")
        remaining = max(0, study.max_evals - n_existing)
        retry.call(lambda: c.studies.update(name, status="running"), "update study")
        handle = c.trials.hyperopt_jobs(gridfs.GridFS(c.db), retry)
        trials = _StudyTrials(handle, exp_key=study.exp_key, pickle_domain=False, on_poll=self.on_poll,
                              poll_every_s=0.0, retry=retry, space=space, fence=self.fence)
        queue_cache: dict = {}
        it = _ElasticFMinIter(
            suggest, base.Domain(_never_called, space), trials,
            rstate=np.random.default_rng(study.seed + n_existing), max_evals=study.max_evals,
            poll_interval_secs=c.poll_s, verbose=False, show_progressbar=False,
            queue_policy=lambda: c._queue_target(study, queue_cache, trials))
        log.info("study %s: %d trials exist, queuing %d more (%s)", name, n_existing, remaining, study.algo)
        lost = None
        try:
            it.run(remaining, block_until_done=True)
        except CoordinatorLost as exc:
            if self.keeper.lost.is_set() or "taken over" in str(exc):
                lost = exc
            else:  # the budget is spent: wait for what is queued, as fmin would
                it.block_until_done()
        if self.keeper.lost.is_set() and lost is None:
            lost = CoordinatorLost(f"study {name!r} was taken over by another coordinator")
        return lost

    def conclude(self, lost: CoordinatorLost | None) -> Snapshot:
        """The study's last snapshot; unless it was taken over, its status and best trial recorded and its
        lease released."""
        c, study, retry = self.coord, self.study, self.retry
        snap = retry.call(lambda: snapshot(c.trials, c.workers, study, self.started), "read progress")
        if lost is None:
            complete = (snap.finished >= study.max_evals or c._exhausted(study, snap)) and not (
                snap.counts["queued"] or snap.counts["running"])
            best = None
            if snap.best_tid is not None:
                best = {"tid": snap.best_tid, "loss": snap.best_loss, "params": snap.best_params,
                        "metric": snap.best_metric}
            retry.call(lambda: c.studies.update(study.name, status="done" if complete else "interrupted",
                                                best=best), "update study")
            retry.call(lambda: c.studies.release_coordinator(study.name, self.token), "release the study")
        if self.progress:
            self.progress(snap)
        return snap


class Coordinator:
    """Create, run, resume and inspect studies in one MongoDB database."""

    def __init__(self, url: str, *, retry: RetryPolicy | None = None, poll_s: float = 0.1):
        self.client, self.db, self.parsed = open_client(url)  # a bad URL or an absent server: one error now
        self.retry = retry or RetryPolicy(max_wait_s=30.0)  # one-shot reads: fail after a while
        self.url = self.parsed.redacted
        self.trials = TrialStore(self.db, self.db[self.parsed.collection])
        self.jobs = self.trials.jobs  # the collection itself, for tests and benchmarks that read raw documents
        self.studies = StudyStore(self.db)
        self.workers = WorkerRegistry(self.db)
        self.poll_s = poll_s
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.retry.call(self._ensure_indexes, "create indexes")

    def _ensure_indexes(self):
        self.studies.ensure_indexes()
        self.trials.ensure_indexes()
        self.workers.ensure_indexes()

    def close(self):
        self.client.close()

    # ------------------------------------------------------------ studies
    def create(self, study: Study, *, exist_ok: bool = False) -> Study:
        """Validate everything about ``study`` that can be checked here, then write it."""
        from ..search.pruners import validate_pruner

        study.validate()
        kind = objective_kind(study)
        if study.space is None:  # store the resolved space, so resuming needs no model code
            study.space = kind.space(study)
        suggest_for(study, resolve_space(study))  # a bad space or bad search options fail here, before any write
        study.pruner = validate_pruner(study.pruner, kind.max_epochs(study))
        return self.retry.call(lambda: self.studies.create(study, exist_ok=exist_ok), "create study")

    def snapshot(self, name: str, started: float | None = None) -> Snapshot:
        study = self.retry.call(lambda: self.studies.get(name), "read study")
        return self.retry.call(lambda: snapshot(self.trials, self.workers, study, started), "read progress")

    def requeue(self, name: str, tid: int | None = None) -> list[int]:
        """Operator action: put running (or one chosen running/errored) trials back in the queue."""
        study = self.studies.get(name)
        tids = self.retry.call(lambda: self.trials.requeue(study.exp_key, tid, "operator"), "requeue")
        if tid is not None and not tids:
            raise ConfigError(f"study {name!r} has no running or errored trial {tid}")
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
                live = self.workers.live(study.exp_key)
                cache["live"] = [w["_id"] for w in live]
                cache["busy"] = self.trials.busy_workers(besides=study.exp_key)
            except Exception:  # noqa: BLE001 - keep the last answer while the server is away
                cache.setdefault("live", [])
                cache.setdefault("busy", set())
            cache["t"] = now
        busy = cache["busy"] | trials.running_workers()
        idle = sum(1 for w in cache["live"] if w not in busy)
        spare = study.queue_spare if study.queue_spare is not None else spare_for(len(cache["live"]))
        return max(1, idle + spare)

    def acquire(self, name: str, *, wait: bool = False, stop: threading.Event | None = None,
                on_wait: Callable[[str], None] | None = None) -> str:
        """Take the study's coordinator lease; with ``wait``, until the current holder lets go."""
        holder = {"id": self.id, **holder_info()}
        told = False
        while True:
            try:
                return self.retry.call(lambda: self.studies.acquire_coordinator(name, holder), "take the study")
            except StudyBusy as exc:
                if not wait:
                    raise
                if on_wait and not told:
                    on_wait(str(exc).split(";")[0] + "; waiting for it to end")
                    told = True
                if stop is not None and stop.wait(2.0):
                    raise
                if stop is None:
                    time.sleep(2.0)

    def run(self, name: str, *, progress: Callable[[Snapshot], None] | None = None,
            stop: threading.Event | None = None, progress_every_s: float = 0.5, wait: bool = False,
            on_wait: Callable[[str], None] | None = None) -> Snapshot:
        """Run (or resume) a study until it has ``max_evals`` finished trials.

        ``stop`` ends the run early (the study is left resumable).  Another
        live coordinator on the study raises ``StudyBusy`` (or, with ``wait``,
        is waited for).  An outage of the database pauses the run.
        """
        study = self.studies.get(name)
        space = resolve_space(study)
        suggest = fill_batch(suggest_for(study, space))
        token = self.acquire(name, wait=wait, stop=stop, on_wait=on_wait)
        study = self.studies.get(name)  # re-read: a `resume --max-evals` may have raised the budget
        keeper = _LeaseKeeper(self.studies, name, token, COORDINATOR_LEASE_S / 6)
        keeper.start()
        run = _StudyRun(self, study, token, keeper, progress=progress, stop=stop, progress_every_s=progress_every_s)
        lost = None
        try:
            lost = run.drive(space, suggest)
        finally:
            keeper.halt.set()
            snap = run.conclude(lost)
        if lost is not None:
            raise lost
        return snap

    @staticmethod
    def _exhausted(study: Study, snap: Snapshot) -> bool:
        """A search with a finite set of points (grid) that produced all of them."""
        if study.algo != "grid":
            return False
        try:
            from ..search.grid import grid_size

            return snap.finished >= grid_size(resolve_space(study), study.search.get("grid_points"))
        except Exception:  # noqa: BLE001 - no grid module, or a space it cannot count
            return False


__all__ = ["Coordinator", "CoordinatorLost", "Snapshot", "StudyBusy", "resolve_space", "snapshot", "suggest_for"]
