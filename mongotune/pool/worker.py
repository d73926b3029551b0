"""The worker pool loop: reserve a trial, train it under a lease, report, repeat.

One ``Worker`` per GPU (or per CPU slot).  It stays in the pool until told to
stop (``idle_timeout``/``max_trials``, a signal, or ``request_stop``), so
TensorFlow and the memory-mapped dataset stay loaded between trials.

Failure handling, in one place:

* an exception, NaN/inf loss or out-of-memory inside the objective is
  recorded on the trial (``result.status = "fail"`` with kind, reason and a
  traceback tail) and the worker takes the next trial;
* the lease (see ``leases``) is refreshed from a background thread; if it is
  lost, the objective is asked to stop and its result is discarded;
* on ``request_stop`` (SIGTERM/SIGINT through the CLI) the running trial is
  handed back to the queue at once;
* transient database errors are retried with backoff (``RetryPolicy``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass

import pymongo
from hyperopt.base import JOB_STATE_RUNNING

from ..store import trialdoc as leases
from ..errors import TrialFailure
from ..objectives import TrialContext, get_objective
from ..store import MongoJobs, RetryPolicy, encode, open_client, utcnow
from ..store.studies import Study, StudyStore
from ..cluster.slurm import worker_identity as slurm_task

log = logging.getLogger("mongotune.worker")

TRACEBACK_TAIL_LINES = 15


@dataclass
class WorkerConfig:
    url: str
    study: str | None = None
    gpu: str | None = None
    idle_timeout: float | None = None
    max_trials: int | None = None
    poll_min_s: float = 0.05
    poll_max_s: float = 0.25
    heartbeat_s: float | None = None  # default: min(lease/4, 5 s)
    reap_every_s: float = 5.0
    retry_max_wait_s: float = 300.0
    artifacts: str | None = None


def _classify(exc: BaseException) -> tuple[str, str]:
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else name
    if isinstance(exc, MemoryError) or name == "ResourceExhaustedError" or "out of memory" in str(exc).lower():
        return "oom", f"out of memory: {name}: {text[:300]}"
    return "exception", f"{name}: {text[:500]}"


def failure_result(kind: str, reason: str, tb: str | None = None) -> dict:
    failure = {"kind": kind, "reason": reason}
    if tb:
        failure["traceback"] = "\n".join(tb.rstrip().splitlines()[-TRACEBACK_TAIL_LINES:])
    return {"status": "fail", "failure": failure}


def normalise_result(result) -> dict:
    """Accept a float or a dict; fail results whose loss is not a finite number."""
    import math

    if not isinstance(result, dict):
        result = {"status": "ok", "loss": result}
    result = dict(result)
    result.setdefault("status", "ok")
    if result["status"] == "ok":
        loss = result.get("loss")
        try:
            finite = loss is not None and math.isfinite(float(loss))
        except (TypeError, ValueError):
            finite = False
        if not finite:
            failure = {"kind": "nan", "reason": f"objective returned a non-finite loss ({loss!r})"}
            return {**result, "status": "fail", "failure": failure}
    return result


class Worker:
    def __init__(self, config: WorkerConfig):
        self.config = config
        self.retry = RetryPolicy(max_wait_s=config.retry_max_wait_s)
        self.client, self.db, self.parsed = self.retry.call(lambda: open_client(config.url), "connect")
        self.jobs = self.db[self.parsed.collection]
        self.mj = MongoJobs(self.db, self.jobs, None, self.client, None, "spec", retry=self.retry)
        self.studies = StudyStore(self.db)
        self.host = socket.gethostname()
        self.id = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.trials_done = 0
        self._stop = threading.Event()
        self._lease_lost = threading.Event()
        self._current: dict | None = None
        self._progress: dict | None = None
        self._lock = threading.Lock()
        self._study_cache: dict[str, tuple[float, Study]] = {}
        self._last_reap = 0.0
        self._hb_thread: threading.Thread | None = None
        self.exit_reason = None

    # ------------------------------------------------------------ control
    def request_stop(self) -> None:
        """Stop after handing the current trial back to the queue (signal-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------ studies
    def _study(self, name: str) -> Study:
        hit = self._study_cache.get(name)
        if hit and time.monotonic() - hit[0] < 10:
            return hit[1]
        study = self.retry.call(lambda: self.studies.get(name), "load study")
        self._study_cache[name] = (time.monotonic(), study)
        return study

    def _heartbeat_interval(self, study: Study | None) -> float:
        if self.config.heartbeat_s:
            return self.config.heartbeat_s
        lease = study.lease_s if study else leases.DEFAULT_LEASE_S
        return max(0.2, min(lease / 4.0, 5.0))

    # ------------------------------------------------------------ registry
    def _register(self) -> None:
        doc = {"_id": self.id, "host": self.host, "pid": os.getpid(), "gpu": self.config.gpu,
               "study": self.config.study, "status": "idle", "current": None, "trials_done": 0,
               "started": utcnow()}
        slurm = slurm_task()
        if slurm:  # started by `mongotune slurm submit`: `slurm status` pairs it with its array task
            doc["slurm"] = slurm
        self.retry.call(lambda: self.db.workers.replace_one({"_id": self.id}, doc, upsert=True), "register worker")
        self._beat_worker()

    def _beat_worker(self) -> None:
        with self._lock:
            current = self._current
            fields = {"status": "stopping" if self.stopping else ("running" if current else "idle"),
                      "current": {"study": current["study"], "tid": current["tid"]} if current else None,
                      "trials_done": self.trials_done}
        self.db.workers.update_one({"_id": self.id}, {"$set": fields, "$currentDate": {"heartbeat": True}})

    def _heartbeat_loop(self) -> None:
        while not self._hb_stop.is_set():
            with self._lock:
                current = self._current
                progress = self._progress
                interval = current["hb_s"] if current else 2.0
            try:
                if current is not None:
                    extra = {"progress": progress} if progress else None
                    if not leases.heartbeat(self.jobs, current["_id"], current["token"], extra):
                        if not self._lease_lost.is_set():
                            log.warning("lease on trial %s was taken over; abandoning it", current["tid"])
                        self._lease_lost.set()
                self._beat_worker()
            except pymongo.errors.PyMongoError as exc:
                log.warning("heartbeat failed (%s); will retry", type(exc).__name__)
            self._hb_stop.wait(interval)

    # ------------------------------------------------------------ leases
    def _maybe_reap(self) -> None:
        now = time.monotonic()
        if now - self._last_reap < self.config.reap_every_s:
            return
        self._last_reap = now
        query = {"state": JOB_STATE_RUNNING, "study": {"$exists": True}}
        if self.config.study:
            query["study"] = self.config.study
        names = {d.get("study") for d in self.jobs.find(query, projection=["study"])}
        settings = {}
        for name in names:
            try:
                st = self._study(name)
            except Exception:  # noqa: BLE001 - a deleted study must not stop the pool
                continue
            settings[st.exp_key] = (st.lease_s, st.max_attempts)
        leases.requeue_expired(self.db, self.jobs, settings)

    # ------------------------------------------------------------ loop
    def _reserve(self) -> dict | None:
        cond = {"study": self.config.study} if self.config.study else {"study": {"$exists": True}}
        token = leases.new_token()
        info = {"id": self.id, "host": self.host, "pid": os.getpid(), "gpu": self.config.gpu}
        job = self.retry.call(
            lambda: self.mj.reserve(self.id, cond=cond, extra_set={"lease_token": token, "worker": info}),
            "reserve trial",
        )
        if job is not None and job.get("lease_token") != token:
            return None
        return job

    def run(self) -> str:
        """Work until stopped; return why (``stopped``, ``idle-timeout``, ``max-trials``)."""
        self._register()
        self._hb_stop = threading.Event()
        self._hb_thread = threading.Thread(target=self._heartbeat_loop, name="mongotune-heartbeat", daemon=True)
        self._hb_thread.start()
        idle_since = time.monotonic()
        poll = self.config.poll_min_s
        reason = "stopped"
        log.info("worker %s joined (study: %s, gpu: %s)", self.id, self.config.study or "any", self.config.gpu)
        try:
            while not self.stopping:
                if self.config.max_trials is not None and self.trials_done >= self.config.max_trials:
                    reason = "max-trials"
                    break
                self.retry.call(self._maybe_reap, "requeue expired trials")
                job = self._reserve()
                if job is None:
                    if self.config.idle_timeout is not None and time.monotonic() - idle_since > self.config.idle_timeout:
                        reason = "idle-timeout"
                        break
                    self._stop.wait(poll)
                    poll = min(poll * 1.5, self.config.poll_max_s)
                    continue
                self._run_job(job)
                idle_since = time.monotonic()
                poll = self.config.poll_min_s
        finally:
            self._hb_stop.set()
            self._hb_thread.join(timeout=5)
            try:
                self.db.workers.update_one({"_id": self.id}, {"$set": {"status": "stopped", "current": None,
                                                                       "stopped": utcnow(), "exit": reason}})
            except pymongo.errors.PyMongoError:
                pass
            log.info("worker %s leaving: %s after %d trials", self.id, reason, self.trials_done)
        self.exit_reason = reason
        return reason

    def _run_job(self, job: dict) -> None:
        tid = job.get("tid")
        token = job["lease_token"]
        study_name = job.get("study")
        try:
            study = self._study(study_name)
        except Exception as exc:  # noqa: BLE001
            leases.finish(self.jobs, job["_id"], token, failure_result("config", f"cannot load study: {exc}"))
            return
        self._lease_lost.clear()
        with self._lock:
            self._progress = None
            self._current = {"_id": job["_id"], "tid": tid, "token": token, "study": study_name,
                             "hb_s": self._heartbeat_interval(study)}
        artifacts = study.training.artifacts or self.config.artifacts
        if artifacts:
            artifacts = os.path.join(os.path.expanduser(artifacts), study.name, f"trial-{tid:05d}")
        ctx = TrialContext(
            tid=tid, attempt=int(job.get("attempts") or 0) + 1, artifacts_dir=artifacts,
            should_stop=lambda: self.stopping or self._lease_lost.is_set(), report=self._set_progress,
        )
        log.info("trial %s of %s: start (attempt %d)", tid, study_name, ctx.attempt)
        t0 = time.monotonic()
        try:
            result = normalise_result(get_objective(study.objective)(study, job.get("params") or {}, ctx))
        except TrialFailure as f:
            result = failure_result(f.kind, f.reason, traceback.format_exc() if f.kind == "exception" else None)
        except Exception as exc:  # noqa: BLE001 - trial-level failure: record and go on
            kind, reason = _classify(exc)
            result = failure_result(kind, reason, traceback.format_exc())
        except MemoryError as exc:
            result = failure_result("oom", f"out of memory: {exc}")
        duration = time.monotonic() - t0
        try:
            if self.stopping and not self._lease_lost.is_set() and _interrupted(result):
                if self.retry.call(lambda: leases.release(self.jobs, job["_id"], token, "worker shutdown"),
                                   "requeue trial"):
                    log.info("trial %s handed back to the queue (worker shutting down)", tid)
                return
            if self._lease_lost.is_set():
                log.warning("trial %s: lease lost, result discarded", tid)
                return
            extra = {"duration_s": round(duration, 3), "finished": utcnow()}
            ok = self.retry.call(lambda: leases.finish(self.jobs, job["_id"], token, result, extra),
                                 "report result")
            if ok:
                self.trials_done += 1
                if result.get("status") == "ok":
                    log.info("trial %s: ok, loss %.5g (%.1fs)", tid, result["loss"], duration)
                else:
                    log.warning("trial %s: failed (%s): %s", tid, result["failure"]["kind"],
                                result["failure"]["reason"])
            else:
                log.warning("trial %s: lease was taken over while finishing; result discarded", tid)
        finally:
            with self._lock:
                self._current = None
                self._progress = None

    def _set_progress(self, info: dict) -> None:
        with self._lock:
            self._progress = encode(info)


def _interrupted(result: dict) -> bool:
    return result.get("status") == "fail" and result.get("failure", {}).get("kind") == "interrupted"


def install_signal_handlers(worker: Worker) -> None:
    """First SIGTERM/SIGINT: hand the trial back and leave cleanly; second: exit now."""
    import signal

    def handler(signum, frame):
        if worker.stopping:
            os._exit(128 + signum)
        log.warning("signal %d: handing the current trial back and stopping (again to force)", signum)
        worker.request_stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
