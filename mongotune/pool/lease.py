"""One lease loop for every kind of worker: register, heartbeat, reserve, reap, stop.

``mongotune worker`` (``pool.worker.Worker``: the trials of mongotune's
studies) and ``mongotune hyperopt-worker`` (``pool.hyperopt_worker``: stock
``fmin`` jobs) are both a ``LeaseWorker``.  This class holds what they share;
every write goes through ``store.trialdoc.TrialStore`` and the worker
registry (``store.workers``):

* **register** in the worker registry (the views list it from there), forget
  workers silent for a day, and mark itself stopped, with why, when it leaves;
* **heartbeat**: a thread refreshes the lease of what runs (with its progress)
  on the server's clock and the worker's own registry document.  A lease
  that no longer matches sets ``lease.lost`` (someone took the trial over or
  finished it).  Database errors are logged (every 30 s) and retried at the
  next beat; any other error ends the thread (``heartbeat_dead``,
  ``heartbeat_error``), and a new one starts before the next reservation;
* **reserve** with lost-reply recovery: every attempt has a fresh token, and
  a retry after a transient error first looks for a trial held under the
  earlier tokens (the reservation went through, its reply did not);
* **reap**: every ``reap_every_s``, the expired leases of the studies this
  worker serves are requeued (or failed after their ``max_attempts``);
* **stop**: ``request_stop`` (a signal through ``install_signal_handlers``; a
  second signal exits at once), the lifeline of ``launch --workers``, a limit
  (``limit``) or an idle timeout.  Anything else that goes wrong in the loop
  is logged, the trial handed back, and the loop goes on after a pause that
  grows with repeated errors: no exception leaves ``run``.

A kind of worker says what it takes and how it runs it: ``runnable_keys``,
``lease_terms``, ``run_lease``, and optionally ``registration``, ``limit``,
``housekeeping``, ``joined`` and ``idle_wait``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

import pymongo.errors

from ..store._connection import RetryPolicy, is_transient
from ..store.studies import EXP_KEY_PREFIX
from ..store.trialdoc import DEFAULT_LEASE_S, Lease, TrialStore, new_token
from ..store.workers import WorkerRegistry
from .local import LIFELINE_ENV

log = logging.getLogger("mongotune.worker")

IDLE_BEAT_S = 2.0  # how often an idle worker refreshes its registry document
HEARTBEAT_WARN_S = 30.0  # a failing heartbeat is logged at most this often


def heartbeat_interval(lease_s: float | None) -> float:
    """How often a lease of ``lease_s`` seconds is refreshed: a quarter of it, 0.2 to 5 s."""
    return max(0.2, min((lease_s or DEFAULT_LEASE_S) / 4.0, 5.0))


def study_of(exp_key) -> str | None:
    """The study an exp_key names, as the registry shows it: a mongotune study's name, else the exp_key."""
    if isinstance(exp_key, str) and exp_key.startswith(EXP_KEY_PREFIX):
        return exp_key[len(EXP_KEY_PREFIX):]
    return exp_key


class LeaseWorker:
    """The lease loop; a kind of worker subclasses it (see the module docstring).

    A subclass sets ``trials`` (a ``TrialStore``), ``registry`` (a
    ``WorkerRegistry``) and ``retry`` (a ``RetryPolicy``) once it is connected,
    before ``run``.
    """

    kind = "mongotune"  # in the registry document
    what = "trial"  # what it runs, in log lines
    idle_reason = "idle-timeout"  # why it left when nothing came for ``idle_timeout`` seconds
    signals = ("SIGTERM", "SIGINT")  # what install_signal_handlers catches
    log = log

    trials: TrialStore
    registry: WorkerRegistry
    retry: RetryPolicy

    def __init__(self, *, gpu: str | None, reap_every_s: float, idle_timeout: float | None):
        self.gpu, self.reap_every_s, self.idle_timeout = gpu, reap_every_s, idle_timeout
        self._stop = threading.Event()
        _watch_lifeline(self)
        self.host = socket.gethostname()
        self.id = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.info = {"id": self.id, "host": self.host, "pid": os.getpid(), "gpu": gpu}  # on each trial it takes
        self.trials_done = 0
        self.exit_reason: str | None = None
        self.started_at = time.monotonic()
        self.heartbeat_s = IDLE_BEAT_S  # while a trial runs (a kind sets it from the trial's lease)
        self._current: Lease | None = None
        self._progress: dict | None = None
        self._lock = threading.Lock()
        self._last_reap = -1e9
        self._hb_thread: threading.Thread | None = None
        self._hb_stop = threading.Event()
        self._hb_wake = threading.Event()  # beat now (a trial was just taken), not at the end of the wait
        self.heartbeat_error: BaseException | None = None

    # ------------------------------------------------------------ what a kind of worker says
    def registration(self) -> dict:
        """Fields of this worker's registry document besides its id, host, pid, gpu and kind."""
        return {}

    def runnable_keys(self) -> list:
        """The exp_keys whose queued trials this worker takes now (retrying reads itself)."""
        raise NotImplementedError

    def lease_terms(self, exp_key) -> tuple[float, int] | None:
        """``(lease_s, max_attempts)`` of a study with running trials, or None: not this worker's to reap."""
        raise NotImplementedError

    def run_lease(self, lease: Lease) -> None:
        """Run what ``lease`` holds and record how it ended (count it in ``trials_done``)."""
        raise NotImplementedError

    def limit(self) -> str | None:
        """A reason to leave before the next reservation (``max-trials``...), or None."""
        return None

    def housekeeping(self) -> None:
        """Between reservations (the spool of ``Worker``)."""

    def joined(self) -> None:
        """Once registered, with the heartbeat running."""

    def idle_wait(self, empty_looks: int) -> float:
        """Seconds to wait after the ``empty_looks``-th look in a row found nothing to take."""
        return 0.25

    # ------------------------------------------------------------ control
    def request_stop(self) -> None:
        """Stop after handing the current trial back to the queue (signal-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def set_progress(self, progress: dict | None) -> None:
        """What the next heartbeat writes on the running trial (``progress``)."""
        with self._lock:
            self._progress = progress

    # ------------------------------------------------------------ the loop
    def run(self) -> str:
        """Work until stopped; return why (``stopped``, the idle reason, or a ``limit``).

        A trial's own failures are recorded on it.  Anything else that goes
        wrong in the loop is logged, the trial (if one was taken) handed back,
        and the loop goes on after a pause; only a failure to join the pool at
        all (the registration refused) or the process's own end
        (KeyboardInterrupt, SystemExit) leaves ``run``.
        """
        self._join()
        self.started_at = time.monotonic()
        reason = "stopped"
        try:
            reason = self._loop()
        finally:
            self._hb_stop.set()
            self._hb_wake.set()
            if self._hb_thread is not None:
                self._hb_thread.join(timeout=5)
            try:
                self.registry.stopped(self.id, reason)
            except pymongo.errors.PyMongoError:
                pass
            self.log.info("%s worker %s leaving: %s after %d %ss", self.kind, self.id, reason, self.trials_done,
                          self.what)
        self.exit_reason = reason
        return reason

    def _join(self) -> None:
        from ..cluster.slurm import worker_identity as slurm_task

        doc = {"_id": self.id, "host": self.host, "pid": os.getpid(), "gpu": self.gpu, "kind": self.kind,
               **self.registration()}
        slurm = slurm_task()
        if slurm:  # started by `mongotune slurm submit`: `slurm status` pairs it with its array task
            doc["slurm"] = slurm
        self.retry.call(lambda: self.registry.register(doc), "register worker")
        self.retry.call(self.registry.forget_dead, "forget dead workers")
        self._hb_stop.clear()
        self._ensure_heartbeat()
        self.joined()

    def _loop(self) -> str:
        idle_since, empty_looks, failures = time.monotonic(), 0, 0
        while not self.stopping:
            reason = self.limit()
            if reason is not None:
                return reason
            try:
                lease = self._next_lease()
                if lease is not None:
                    self._take(lease)
            except Exception as exc:  # noqa: BLE001 - not the trial's own failure: log, wait, go on
                failures += 1
                wait = min(60, 2 ** failures)
                self.log.error("worker error (%s: %s); going on in %ds", type(exc).__name__, exc, wait,
                               exc_info=not is_transient(exc) and not isinstance(exc, pymongo.errors.PyMongoError))
                self._stop.wait(wait)
                continue
            failures = 0
            if lease is None:
                if self.idle_timeout is not None and time.monotonic() - idle_since > self.idle_timeout:
                    return self.idle_reason
                self._stop.wait(self.idle_wait(empty_looks))
                empty_looks += 1
                continue
            idle_since, empty_looks = time.monotonic(), 0
        return "stopped"

    def _next_lease(self) -> Lease | None:
        self._ensure_heartbeat()
        self.retry.call(self._maybe_reap, f"requeue expired {self.what}s")
        self.housekeeping()
        return self._reserve()

    def _take(self, lease: Lease) -> None:
        """Run a reserved trial; should something other than the trial itself fail, hand the trial back."""
        with self._lock:
            self._current, self._progress = lease, None
        self._hb_wake.set()  # the lease's first heartbeat, and the registry's "running", now
        try:
            self.run_lease(lease)
        except Exception as exc:
            try:
                self.trials.release(lease, f"worker error: {type(exc).__name__}: {str(exc)[:300]}")
            except Exception:  # noqa: BLE001 - then its lease expires
                pass
            raise
        finally:
            with self._lock:
                self._current = self._progress = None

    def hand_back(self, lease: Lease, reason: str, why: str, level: int = logging.INFO) -> None:
        """Put the trial back in the queue at once, no attempt counted (``reason`` recorded on it)."""
        if self.retry.call(lambda: self.trials.release(lease, reason), f"hand the {self.what} back"):
            self.log.log(level, "%s %s handed back to the queue (%s)", self.what, lease.tid, why)

    # ------------------------------------------------------------ reserve and reap
    def _reserve(self) -> Lease | None:
        """Take a trial; every attempt uses a fresh token, and a retry first looks for what an attempt
        whose reply was lost may have taken."""
        keys = self.runnable_keys()
        if not keys:
            return None
        tokens: list[str] = []
        while True:
            try:
                if tokens:
                    held = self.trials.held_by(tokens)
                    if held is not None:
                        self.log.info("%s %s: found the reservation whose reply was lost", self.what, held.tid)
                        return held
                tokens.append(new_token())
                return self.trials.reserve(self.info, keys, tokens[-1])
            except Exception as exc:  # noqa: BLE001 - transient errors only; others propagate
                if not is_transient(exc):
                    raise
                self.retry.call(lambda: self.trials.db.client.admin.command("ping"), f"reserve {self.what}")

    def _maybe_reap(self) -> None:
        now = time.monotonic()
        if now - self._last_reap < self.reap_every_s:
            return
        self._last_reap = now
        terms = {}
        for exp_key in self.trials.running_exp_keys():
            found = self.lease_terms(exp_key)
            if found is not None:
                terms[exp_key] = found
        self.trials.expire(terms)

    # ------------------------------------------------------------ heartbeats
    def _beat(self, lease: Lease | None, progress: dict | None) -> None:
        if lease is not None and not lease.lost.is_set() and not self.trials.heartbeat(lease, progress):
            self.log.warning("lease on %s %s was taken over; abandoning it", self.what, lease.tid)
            lease.lost.set()
        status = "stopping" if self.stopping else ("running" if lease else "idle")
        current = {"exp_key": lease.exp_key, "study": study_of(lease.exp_key), "tid": lease.tid} if lease else None
        self.registry.beat(self.id, status, current, self.trials_done)

    def _heartbeat_loop(self) -> None:
        """Refresh the current lease and the worker's own document until told to stop (see the module
        docstring for errors)."""
        warned_at = -1e9
        try:
            while not self._hb_stop.is_set():
                self._hb_wake.clear()
                with self._lock:
                    lease, progress = self._current, self._progress
                try:
                    self._beat(lease, progress)
                except pymongo.errors.PyMongoError as exc:
                    if time.monotonic() - warned_at > HEARTBEAT_WARN_S:
                        warned_at = time.monotonic()
                        self.log.warning("heartbeat failed (%s); retrying", type(exc).__name__)
                self._hb_wake.wait(self.heartbeat_s if lease else IDLE_BEAT_S)
        except Exception as exc:  # noqa: BLE001 - recorded; the trial is handed back and a new thread starts
            self.heartbeat_error = exc
            self.log.exception("heartbeat thread died: %s: %s", type(exc).__name__, exc)

    def _ensure_heartbeat(self) -> None:
        if self._hb_thread is not None and self._hb_thread.is_alive():
            return
        if self._hb_thread is not None:
            self.log.warning("starting a new heartbeat thread")
        self.heartbeat_error = None
        self._hb_thread = threading.Thread(target=self._heartbeat_loop, name="mongotune-heartbeat", daemon=True)
        self._hb_thread.start()

    def heartbeat_dead(self) -> bool:
        """The heartbeat thread ended while it should run (an unexpected error: ``heartbeat_error``)."""
        return self._hb_thread is not None and not self._hb_thread.is_alive() and not self._hb_stop.is_set()


def _watch_lifeline(worker: LeaseWorker) -> None:
    """A worker started by ``launch --workers`` (``pool.local``) holds the read end of a pipe whose write end
    only the launch process has: when that process ends, however it ends (SIGKILL included), the pipe
    closes and the worker stops as on SIGTERM (its trial handed back)."""
    raw = os.environ.pop(LIFELINE_ENV, None)
    if raw is None:
        return
    try:
        fd = int(raw)
        os.set_inheritable(fd, False)  # not the trials' children
    except (ValueError, OSError) as exc:
        log.warning("ignoring %s=%r: %s", LIFELINE_ENV, raw, exc)
        return

    def watch() -> None:
        try:
            while os.read(fd, 64):
                pass
        except OSError:
            pass
        log.warning("the launch that started this worker has ended: handing the %s back and stopping", worker.what)
        LeaseWorker.request_stop(worker)  # from this thread: never what a kind's own request_stop raises

    threading.Thread(target=watch, name="mongotune-lifeline", daemon=True).start()


def install_signal_handlers(worker: LeaseWorker, what: str | None = None, signals: tuple[str, ...] | None = None) -> None:
    """First signal (``worker.signals``): hand the running trial back and leave cleanly
    (``worker.request_stop()``); a second one: exit at once."""
    import signal

    what = what or worker.what

    def handler(signum, frame):
        if worker.stopping:
            os._exit(128 + signum)
        log.warning("signal %d: handing the running %s back and stopping (again to force)", signum, what)
        worker.request_stop()

    for name in signals or worker.signals:
        signal.signal(getattr(signal, name), handler)
