"""``mongotune hyperopt-worker``: run stock hyperopt jobs under the pool's leases.

Code that calls ``hyperopt.fmin(..., trials=mongotune.store.MongoTrials(url,
exp_key=...))`` queues jobs whose objective travels inside the database
(hyperopt cloudpickles it).  This worker runs them, with the options of
``hyperopt-mongo-worker`` and what mongotune's pool adds: a lease token per
reservation, a heartbeat on the server's clock, expired leases requeued (or
failed after ``max_attempts``) by any worker that notices, results written only
under the lease they were computed for, the worker registry (``mongotune
workers``), GPU pinning, and SIGTERM handing the running job back to the queue.

Unpickling code from a database runs whatever its writers put there, so the
worker refuses to start without ``allow_pickle`` (``--allow-pickle``).

It never takes trials of mongotune studies (their exp_keys start with
``mongotune:``): those are run by ``mongotune worker``.  It should not share an
exp_key with a stock ``hyperopt-mongo-worker``, which does not heartbeat: its
jobs would look abandoned after ``lease_s`` and be requeued.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import traceback
import uuid

import pymongo.errors

from ..objectives import kind_named
from ..objectives.stock_fmin import NAME as STOCK_FMIN
from ..store import MongoJobs, MongoTrials, RetryPolicy, decode
from ..store._hyperopt_worker import MongoCtrl, ReserveTimeout, Shutdown, _jobs_url, job_workdir
from ..store.studies import EXP_KEY_PREFIX
from ..store.trialdoc import QUEUED, RUNNING, Lease, TrialStore, failure_result, new_token
from ..store.workers import WorkerRegistry
from .hyperopt_config import PICKLE_REFUSAL, HyperoptWorkerConfig  # noqa: F401 (part of this module's API)

log = logging.getLogger("mongotune.hyperopt_worker")

class HyperoptWorker:
    """One process that runs hyperopt jobs one after another until a limit or a signal ends it."""

    def __init__(self, config: HyperoptWorkerConfig):
        self.config = config.validate()
        self.kind = kind_named(STOCK_FMIN)  # what a job is and how it runs (objectives.stock_fmin)
        self.retry = RetryPolicy(max_wait_s=config.retry_max_wait_s)
        url = _jobs_url(config.mongo)
        self.mj = self.retry.call(lambda: MongoJobs.new_from_connection_str(url), "connect")
        self.db = self.mj.db
        self.trials = TrialStore(self.db, self.mj.jobs)
        self.registry = WorkerRegistry(self.db)
        self.host = socket.gethostname()
        self.id = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.jobs_done = 0
        self.exit_reason: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._lease: Lease | None = None
        self._in_objective = False
        self._last_reap = 0.0

    # ------------------------------------------------------------ control
    def request_stop(self) -> None:
        """From a signal handler: leave after handing the running job back (interrupts the objective)."""
        self._stop.set()
        if self._in_objective:
            raise Shutdown("worker stopping")

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------ registry and heartbeat
    def _info(self) -> dict:
        return {"id": self.id, "host": self.host, "pid": os.getpid(), "gpu": self.config.gpu, "kind": "hyperopt"}

    def _heartbeat_loop(self, stop: threading.Event) -> None:
        interval = max(0.2, min(self.config.lease_s / 4.0, 5.0))
        while not stop.is_set():
            with self._lock:
                lease = self._lease
            try:
                if lease is not None and not lease.lost.is_set() and not self.trials.heartbeat(lease):
                    log.warning("lease on job %s was taken over", lease.tid)
                    lease.lost.set()
                current = {"study": lease.exp_key, "tid": lease.tid} if lease else None
                status = "stopping" if self.stopping else ("running" if lease else "idle")
                self.registry.beat(self.id, status, current, self.jobs_done)
            except pymongo.errors.PyMongoError as exc:
                log.warning("heartbeat failed (%s); will retry", type(exc).__name__)
            stop.wait(interval)

    # ------------------------------------------------------------ queue
    def _exp_keys(self, state: int) -> list:
        if self.config.exp_key is not None:
            return [self.config.exp_key]
        keys = self.mj.jobs.distinct("exp_key", {"state": state})
        return [k for k in keys if not (isinstance(k, str) and k.startswith(EXP_KEY_PREFIX))]

    def _maybe_reap(self) -> None:
        now = time.monotonic()
        if now - self._last_reap < self.config.reap_every_s:
            return
        self._last_reap = now
        keys = self._exp_keys(RUNNING)
        self.trials.expire({k: (self.config.lease_s, self.config.max_attempts) for k in keys})

    def _reserve(self) -> Lease | None:
        self.retry.call(self._maybe_reap, "requeue expired jobs")
        keys = self.retry.call(lambda: self._exp_keys(QUEUED), "look at the queue")
        if not keys:
            return None
        token = new_token()
        try:
            return self.trials.reserve(self._info(), keys, token=token)
        except pymongo.errors.PyMongoError:
            # the reply may have been lost after the reservation was made: look for it by its token
            return self.retry.call(lambda: self.trials.held_by([token]), "reserve job")

    def _wait_for_job(self, deadline: float | None) -> Lease | None:
        while not self.stopping:
            lease = self._reserve()
            if lease is not None:
                return lease
            if deadline is not None and time.monotonic() > deadline:
                raise ReserveTimeout()
            self._stop.wait(random.uniform(0.5, 1.0) * self.config.poll_interval)
        return None

    # ------------------------------------------------------------ loop
    def run(self) -> str:
        """Run jobs until a limit or a signal; return why it stopped (``max-jobs``, ``reserve-timeout``,
        ``last-job-timeout``, ``consecutive-failures``, ``stopped``)."""
        cfg = self.config
        self.retry.call(lambda: self.registry.register({"_id": self.id, **self._info(), "exp_key": cfg.exp_key
                                                        or "(hyperopt)", "study": None}), "register worker")
        hb_stop = threading.Event()
        hb = threading.Thread(target=self._heartbeat_loop, args=(hb_stop,), name="hyperopt-heartbeat", daemon=True)
        hb.start()
        started = time.monotonic()
        failures = 0
        reason = "stopped"
        try:
            while not self.stopping:
                if cfg.max_jobs is not None and self.jobs_done >= cfg.max_jobs:
                    reason = "max-jobs"
                    break
                if cfg.last_job_timeout is not None and time.monotonic() - started > cfg.last_job_timeout:
                    reason = "last-job-timeout"
                    break
                if failures >= cfg.max_consecutive_failures:
                    reason = "consecutive-failures"
                    break
                deadline = time.monotonic() + cfg.reserve_timeout if cfg.reserve_timeout else None
                try:
                    lease = self._wait_for_job(deadline)
                except ReserveTimeout:
                    reason = "reserve-timeout"
                    break
                if lease is None:
                    break
                ok = self._run_job(lease)
                failures = 0 if ok else failures + 1
        finally:
            hb_stop.set()
            hb.join(timeout=5)
            try:
                self.registry.stopped(self.id, reason)
            except pymongo.errors.PyMongoError:
                pass
        self.exit_reason = reason
        log.info("hyperopt-worker %s leaving: %s after %d job(s)", self.id, reason, self.jobs_done)
        return reason

    def _workdir(self, doc: dict) -> str:
        if self.config.workdir is None:
            root = (doc.get("misc") or {}).get("workdir", os.getcwd()) or ""
            workdir = os.path.join(root, str(doc["_id"]))
        else:
            workdir = self.config.workdir
        return os.path.abspath(os.path.expanduser(workdir))

    def _run_job(self, lease: Lease) -> bool:
        """Run one job; True if its objective returned (whatever its status), False if it raised."""
        with self._lock:
            self._lease = lease
        try:
            doc = decode(self.retry.call(lambda: self.mj.jobs.find_one({"_id": lease.id}), "read job"))
            log.info("job %s of %s: start (attempt %d)", lease.tid, lease.exp_key, lease.attempt)
            ctrl = MongoCtrl(trials=MongoTrials(self.mj, exp_key=doc.get("exp_key"), refresh=False),
                             read_only=False, current_trial=doc)
            t0 = time.monotonic()
            ok = True
            try:
                evaluate = self.kind.job_objective(doc, ctrl, self.config.allow_pickle)
                workdir = self._workdir(doc)
                created = not os.path.exists(workdir)
                os.makedirs(workdir, exist_ok=True)
                try:
                    with job_workdir(workdir):
                        self._in_objective = True
                        try:
                            if self.stopping:
                                raise Shutdown("worker stopping")
                            result = evaluate()
                        finally:
                            self._in_objective = False
                finally:
                    if created and self.config.workdir is None:
                        _remove_if_empty(workdir)  # a job directory the job left nothing in
                for name, blob in list(result.pop("attachments", {}).items()):
                    ctrl.attachments[name] = blob
            except Shutdown:
                if self.retry.call(lambda: self.trials.release(lease, "worker shutdown"), "hand the job back"):
                    log.info("job %s handed back to the queue (worker stopping)", lease.tid)
                return True
            except Exception as exc:  # noqa: BLE001 - the job's failure is recorded; the worker goes on
                ok = False
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                result = failure_result("exception", f"{type(exc).__name__}: {text}"[:500], traceback.format_exc())
            extra = {"duration_s": round(time.monotonic() - t0, 3)}
            if self.retry.call(lambda: self.trials.finish(lease, result, extra), "report result"):
                self.jobs_done += 1
                log.info("job %s: %s", lease.tid, "ok" if ok else f"failed: {result['failure']['reason']}")
            else:
                log.warning("job %s: finished by another worker meanwhile; this result is dropped", lease.tid)
            return ok
        finally:
            with self._lock:
                self._lease = None


def _remove_if_empty(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:  # not empty (the job's files stay), or gone
        pass


def install_signal_handlers(worker: HyperoptWorker) -> None:
    """First SIGTERM/SIGINT/SIGHUP: hand the running job back and leave; a second one: exit at once."""
    from .worker import install_signal_handlers as install

    install(worker, "job", ("SIGTERM", "SIGINT", "SIGHUP"))
