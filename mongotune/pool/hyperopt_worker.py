"""``mongotune hyperopt-worker``: run stock hyperopt jobs under the pool's leases.

Code that calls ``hyperopt.fmin(..., trials=mongotune.store.MongoTrials(url,
exp_key=...))`` queues jobs whose objective travels inside the database
(hyperopt cloudpickles it).  This worker runs them, with the options of
``hyperopt-mongo-worker`` and what mongotune's pool adds: a lease token per
reservation, a heartbeat on the server's clock, expired leases requeued (or
failed after ``max_attempts``) by any worker that notices, results written only
under the lease they were computed for, the worker registry (``mongotune
workers``), GPU pinning, and SIGTERM handing the running job back to the queue.
That is the lease loop ``mongotune worker`` runs too (``pool.lease.LeaseWorker``);
this module says which jobs it takes and runs one.

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
import time
import traceback

from ..objectives import kind_named
from ..objectives.stock_fmin import NAME as STOCK_FMIN
from ..store import MongoJobs, MongoTrials, RetryPolicy
from ..store._hyperopt_worker import MongoCtrl, Shutdown, _jobs_url, job_workdir
from ..store.studies import EXP_KEY_PREFIX
from ..store.trialdoc import QUEUED, Lease, TrialStore, failure_result
from ..store.workers import WorkerRegistry
from .hyperopt_config import PICKLE_REFUSAL, HyperoptWorkerConfig  # noqa: F401 (part of this module's API)
from .lease import LeaseWorker, heartbeat_interval
from .lease import install_signal_handlers as _install

log = logging.getLogger("mongotune.hyperopt_worker")


class HyperoptWorker(LeaseWorker):
    """One process that runs hyperopt jobs one after another until a limit or a signal ends it."""

    kind = "hyperopt"
    what = "job"
    idle_reason = "reserve-timeout"
    signals = ("SIGTERM", "SIGINT", "SIGHUP")
    log = log

    def __init__(self, config: HyperoptWorkerConfig):
        self.config = config.validate()
        super().__init__(gpu=config.gpu, reap_every_s=config.reap_every_s,
                         idle_timeout=config.reserve_timeout or None)
        self.kind_of_job = kind_named(STOCK_FMIN)  # what a job is and how it runs (objectives.stock_fmin)
        self.retry = RetryPolicy(max_wait_s=config.retry_max_wait_s)
        url = _jobs_url(config.mongo)
        self.mj = self.retry.call(lambda: MongoJobs.new_from_connection_str(url), "connect")
        self.db = self.mj.db
        self.trials = TrialStore.of(self.mj)
        self.registry = WorkerRegistry(self.db)
        self.info["kind"] = "hyperopt"
        self.heartbeat_s = heartbeat_interval(config.lease_s)
        self.failures = 0  # jobs in a row whose objective raised
        self._in_objective = False

    @property
    def jobs_done(self) -> int:
        return self.trials_done

    # ------------------------------------------------------------ control
    def request_stop(self) -> None:
        """From a signal handler: leave after handing the running job back (interrupts the objective)."""
        super().request_stop()
        if self._in_objective:
            raise Shutdown("worker stopping")

    # ------------------------------------------------------------ the lease loop's questions
    def registration(self) -> dict:
        return {"exp_key": self.config.exp_key or "(hyperopt)", "study": None}

    def _serves(self, exp_key) -> bool:
        if self.config.exp_key is not None:
            return exp_key == self.config.exp_key
        return not (isinstance(exp_key, str) and exp_key.startswith(EXP_KEY_PREFIX))

    def runnable_keys(self) -> list:
        if self.config.exp_key is not None:
            return [self.config.exp_key]
        keys = self.retry.call(lambda: self.trials.exp_keys(QUEUED), "look at the queue")
        return [k for k in keys if self._serves(k)]

    def lease_terms(self, exp_key) -> tuple[float, int] | None:
        return (self.config.lease_s, self.config.max_attempts) if self._serves(exp_key) else None

    def limit(self) -> str | None:
        cfg = self.config
        if cfg.max_jobs is not None and self.trials_done >= cfg.max_jobs:
            return "max-jobs"
        if cfg.last_job_timeout is not None and time.monotonic() - self.started_at > cfg.last_job_timeout:
            return "last-job-timeout"
        if self.failures >= cfg.max_consecutive_failures:
            return "consecutive-failures"
        return None

    def idle_wait(self, empty_looks: int) -> float:
        return random.uniform(0.5, 1.0) * self.config.poll_interval

    # ------------------------------------------------------------ one job
    def _workdir(self, doc: dict) -> str:
        if self.config.workdir is None:
            root = (doc.get("misc") or {}).get("workdir", os.getcwd()) or ""
            workdir = os.path.join(root, str(doc["_id"]))
        else:
            workdir = self.config.workdir
        return os.path.abspath(os.path.expanduser(workdir))

    def run_lease(self, lease: Lease) -> None:
        """Run one job and record its result; a job whose objective raised counts towards
        ``max_consecutive_failures``."""
        doc = self.retry.call(lambda: self.trials.document(lease), "read job")
        if doc is None:
            log.warning("job %s of %s: deleted before it ran", lease.tid, lease.exp_key)
            return
        log.info("job %s of %s: start (attempt %d)", lease.tid, lease.exp_key, lease.attempt)
        ctrl = MongoCtrl(trials=MongoTrials(self.mj, exp_key=doc.get("exp_key"), refresh=False),
                         read_only=False, current_trial=doc)
        t0, ok = time.monotonic(), True
        try:
            result = self._evaluate(doc, ctrl)
        except Shutdown:
            self.hand_back(lease, "worker shutdown", "worker stopping")
            return
        except Exception as exc:  # noqa: BLE001 - the job's failure is recorded; the worker goes on
            ok = False
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            result = failure_result("exception", f"{type(exc).__name__}: {text}"[:500], traceback.format_exc())
        self.failures = 0 if ok else self.failures + 1
        extra = {"duration_s": round(time.monotonic() - t0, 3)}
        if self.retry.call(lambda: self.trials.finish(lease, result, extra), "report result"):
            self.trials_done += 1
            log.info("job %s: %s", lease.tid, "ok" if ok else f"failed: {result['failure']['reason']}")
        else:
            log.warning("job %s: finished by another worker meanwhile; this result is dropped", lease.tid)

    def _evaluate(self, doc: dict, ctrl: MongoCtrl) -> dict:
        """The job's objective, run in its working directory; its attachments go through ``ctrl``."""
        evaluate = self.kind_of_job.job_objective(doc, ctrl, self.config.allow_pickle)
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
        return result


def _remove_if_empty(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:  # not empty (the job's files stay), or gone
        pass


def install_signal_handlers(worker: HyperoptWorker) -> None:
    """First SIGTERM/SIGINT/SIGHUP: hand the running job back and leave; a second one: exit at once."""
    _install(worker)
