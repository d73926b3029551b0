"""The worker: reserve a trial, run it under a lease, report every step, record the end, repeat.

One ``Worker`` per GPU (or per CPU slot), on any host.  It stays in the pool
until told to stop (``idle_timeout``/``max_trials``, a signal, or
``request_stop``), so TensorFlow and the memory-mapped dataset stay loaded
between trials.  Every write to a trial goes through ``store.trialdoc``.

What happens when things go wrong, in one place:

* the objective raises, returns NaN/inf, runs out of memory: the trial is
  failed with the reason (``result.failure``) and the worker goes on;
* the pruner stops the trial: it ends at once as pruned, keeping its curve
  and files, and the worker takes the next one;
* the lease is lost (another worker took the trial over, or someone finished
  it first): the objective is asked to stop and its result is dropped;
* the heartbeat thread dies of an unexpected error: the trial is stopped and
  handed back, and a new heartbeat thread starts;
* ``request_stop`` (SIGTERM/SIGINT through the CLI): the trial is handed back
  to the queue at once, without counting an attempt;
* the database goes away, for however long: every write is retried until it
  goes through (a log line says so); a finished result is first written to a
  spool file, so not even a crash of the waiting worker loses it: the next
  worker that looks at the spool (at its start, then every 30 s) delivers it;
  a file is deleted only once the database has the result, and a worker
  claims it with a lock the kernel drops when the worker dies, so a kill at
  any point of a delivery loses nothing;
* anything else goes wrong in the loop (a server error that cannot be retried
  as it is, a bug): it is logged, the trial handed back, and the loop goes on
  after a pause that grows with repeated errors; no exception leaves ``run``;
* started by ``launch --workers`` and the launch process ends, however it
  ends: the worker stops as on SIGTERM (``LIFELINE_ENV``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pymongo

from .. import paths
from ..errors import TrialFailure, TrialPruned
from ..objectives import TrialContext, kind_for_trial, runs_user_code
from ..search.pruners import ASHAPruner, Pruner, StudyCurves, TrialCurve, make_pruner, orient
from ..store import RetryPolicy, decode, encode, open_client
from ..store._connection import FOREVER, is_transient
from ..store._url import parse_mongo_url
from ..store.studies import Study, StudyStore
from ..store.trialdoc import (CURVE_MAX_POINTS, DEFAULT_LEASE_S, DONE, RUNNING, Lease, TrialStore, failure_result,
                              new_token, validate_result)
from ..store.workers import WorkerRegistry
from .local import LIFELINE_ENV

log = logging.getLogger("mongotune.worker")

STUDIES_REFRESH_S = 2.0
REPORT_RETRY = RetryPolicy(max_wait_s=5.0, log_every_s=60.0)  # a curve point must not stall training for long
SPOOL_RETRY_S = 30.0  # how often a worker looks for spooled results nobody is delivering
SPOOL_DIR_ENV = "MONGOTUNE_SPOOL_DIR"  # where finished results wait for the database (default $MONGOTUNE_HOME/spool)
SPOOL_PAUSE_ENV = "MONGOTUNE_TEST_SPOOL_PAUSE"  # tests only: wait at this point of spooling, to be killed there


@dataclass
class WorkerConfig:
    url: str
    study: str | None = None  # only this study's trials
    gpu: str | None = None
    idle_timeout: float | None = None
    max_trials: int | None = None
    poll_min_s: float = 0.05
    poll_max_s: float = 0.25
    heartbeat_s: float | None = None  # default: min(lease/4, 5 s)
    reap_every_s: float = 5.0
    artifacts: str | None = None  # this host's artifact root (default $MONGOTUNE_ARTIFACTS or $MONGOTUNE_HOME/artifacts)
    allowed_roots: list[str] = field(default_factory=list)  # where files named by a study may be read
    allow_user_code: bool = False  # run command studies and user model functions
    spool_dir: str | None = None  # finished results waiting for the database (default $MONGOTUNE_SPOOL_DIR, else
    #                               $MONGOTUNE_HOME/spool); may be shared by the workers of several hosts


def _classify(exc: BaseException) -> tuple[str, str]:
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else name
    if isinstance(exc, MemoryError) or name == "ResourceExhaustedError" or "out of memory" in str(exc).lower():
        return "oom", f"out of memory: {name}: {text[:300]}"
    return "exception", f"{name}: {text[:500]}"


def _interrupted(result: dict) -> bool:
    return result.get("status") == "fail" and result.get("failure", {}).get("kind") == "interrupted"


def _under(path: str, roots: list[Path]) -> bool:
    p = Path(os.path.expanduser(path)).resolve()
    return any(p == r or r in p.parents for r in roots)


def _latest_run(points: list[dict]) -> list[dict]:
    """The points of a trial's latest run (a trial run again starts its curve again)."""
    if not points:
        return []
    latest = points[-1].get("lease", "")
    return [p for p in points if p.get("lease", "") == latest]


class _CurveCache:
    """The study's curves as a pruner sees them, read incrementally.

    Finished trials never change, so they are read once (those finished since
    the last read, by ``refresh_time``); running trials are read every time.
    """

    def __init__(self, trials: TrialStore, study: Study):
        self.trials, self.study = trials, study
        self.done: dict[int, TrialCurve] = {}
        self.since = None

    def _curve(self, doc: dict, finished: bool) -> TrialCurve:
        points = _latest_run(decode(doc.get("curve") or []))
        pruned = bool((doc.get("result") or {}).get("pruned"))
        return TrialCurve(doc["tid"], {p["step"]: orient(p["value"], self.study.goal) for p in points}, finished,
                          pruned)

    def read(self) -> StudyCurves:
        import datetime

        # one field per filter (the study and state are checked here): the embedded server probes
        # the whole collection for every field of a filter
        q_done = {"state": DONE} if self.since is None else {"refresh_time": {"$gt": self.since}}
        fields = ["tid", "state", "curve", "refresh_time", "exp_key", "result.pruned"]
        newest = self.since
        for doc in self.trials.jobs.find(q_done, projection=fields):
            if doc.get("exp_key") != self.study.exp_key or doc.get("state") != DONE:
                continue
            self.done[doc["tid"]] = self._curve(doc, True)
            t = doc.get("refresh_time")
            if t is not None and (newest is None or t > newest):
                newest = t
        if newest is not None:  # writes stamped just before the newest one may become visible just after it
            self.since = newest - datetime.timedelta(seconds=2)
        curves = StudyCurves(dict(self.done))
        for doc in self.trials.jobs.find({"state": RUNNING}, projection=fields):
            if doc.get("exp_key") == self.study.exp_key:
                curves.trials[doc["tid"]] = self._curve(doc, False)
        return curves


class Worker:
    def __init__(self, config: WorkerConfig):
        self.config = config
        self._stop = threading.Event()
        _watch_lifeline(self)
        self.retry = FOREVER
        parsed = parse_mongo_url(config.url)  # a malformed URL fails now, with one line
        self.client, self.db, self.parsed = open_client(parsed, check=False)
        self.retry.call(lambda: self.client.admin.command("ping"), "connect")
        self.jobs = self.db[self.parsed.collection]
        self.trials = TrialStore(self.db, self.jobs)
        self.studies = StudyStore(self.db)
        self.registry = WorkerRegistry(self.db)
        self.host = socket.gethostname()
        self.id = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.info = {"id": self.id, "host": self.host, "pid": os.getpid(), "gpu": config.gpu}
        self.artifacts_root = Path(os.path.expanduser(config.artifacts)) if config.artifacts else paths.artifacts_dir()
        self.spool = Path(config.spool_dir or os.environ.get(SPOOL_DIR_ENV) or paths.home() / "spool")
        self._spool_checked = -1e9
        from ..data import default_cache_dir

        self.allowed_roots = [Path(os.path.expanduser(r)).resolve() for r in
                              [*config.allowed_roots, *_env_roots(), str(default_cache_dir()), str(self.artifacts_root)]]
        self.trials_done = 0
        self._current: Lease | None = None
        self._progress: dict | None = None
        self._lock = threading.Lock()
        self._study_cache: dict[str, tuple[float, Study]] = {}
        self._keys: tuple[float, list[str]] = (-1e9, [])
        self._curves: dict[str, _CurveCache] = {}
        self._pruners: dict[str, Pruner] = {}
        self._pruned_by: dict[int, dict] = {}  # tid -> why the pruner stopped it
        self._last_reap = 0.0
        self._hb_thread: threading.Thread | None = None
        self._hb_stop = threading.Event()
        self._hb_error: BaseException | None = None
        self.exit_reason = None

    # ------------------------------------------------------------ control
    def request_stop(self) -> None:
        """Stop after handing the current trial back to the queue (signal-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------ studies
    def _study(self, exp_key: str) -> Study | None:
        hit = self._study_cache.get(exp_key)
        if hit and time.monotonic() - hit[0] < 10:
            return hit[1]
        study = self.retry.call(lambda: self.studies.by_exp_key(exp_key), "load study")
        if study is not None:
            self._study_cache[exp_key] = (time.monotonic(), study)
        return study

    def _runnable_keys(self) -> list[str]:
        """The studies whose trials this worker takes (refreshed every few seconds)."""
        at, keys = self._keys
        if time.monotonic() - at < STUDIES_REFRESH_S:
            return keys
        if self.config.study:
            study = self.retry.call(lambda: self.studies.find(self.config.study), "load study")
            docs = {study.exp_key: study.objective} if study else {}
        else:
            docs = self.retry.call(self._objectives, "list studies")
        keys = [k for k, obj in docs.items() if self.config.allow_user_code or not runs_user_code(obj)]
        skipped = sorted(set(docs) - set(keys))
        if skipped and skipped != getattr(self, "_told_skip", None):
            self._told_skip = skipped
            log.info("not taking trials of %s: they run user code (start the worker with --allow-user-code "
                     "to allow it)", ", ".join(k.split(":", 1)[-1] for k in skipped))
        self._keys = (time.monotonic(), keys)
        return keys

    def _objectives(self) -> dict[str, dict]:
        out = {}
        for d in self.studies.coll.find({}, projection=["exp_key", "objective"]):
            obj = d.get("objective")
            out[d.get("exp_key") or f"mongotune:{d['_id']}"] = obj if isinstance(obj, dict) else {"kind": obj}
        return out

    def _heartbeat_interval(self, study: Study | None) -> float:
        if self.config.heartbeat_s:
            return self.config.heartbeat_s
        lease = study.lease_s if study else DEFAULT_LEASE_S
        return max(0.2, min(lease / 4.0, 5.0))

    # ------------------------------------------------------------ heartbeats
    def _beat_worker(self) -> None:
        with self._lock:
            lease = self._current
        status = "stopping" if self.stopping else ("running" if lease else "idle")
        current = {"exp_key": lease.exp_key, "study": lease.exp_key.split(":", 1)[-1], "tid": lease.tid} if lease else None
        self.registry.beat(self.id, status, current, self.trials_done)

    def _heartbeat_loop(self) -> None:
        """Refresh the current lease and the worker's own document until told to stop.

        Database errors are logged and retried at the next beat.  Any other
        error ends the thread; the trial notices (``should_stop``) and is
        handed back, and ``_ensure_heartbeat`` starts a new thread.
        """
        warned_at = 0.0
        try:
            while not self._hb_stop.is_set():
                with self._lock:
                    lease, progress = self._current, self._progress
                interval = self._hb_interval if lease else 2.0
                try:
                    if lease is not None and not lease.lost.is_set():
                        if not self.trials.heartbeat(lease, progress):
                            log.warning("lease on trial %s was taken over; abandoning it", lease.tid)
                            lease.lost.set()
                    self._beat_worker()
                except pymongo.errors.PyMongoError as exc:
                    if time.monotonic() - warned_at > 30:
                        warned_at = time.monotonic()
                        log.warning("heartbeat failed (%s); retrying", type(exc).__name__)
                self._hb_stop.wait(interval)
        except Exception as exc:  # noqa: BLE001 - recorded; the trial is handed back and a new thread starts
            self._hb_error = exc
            log.exception("heartbeat thread died: %s: %s", type(exc).__name__, exc)

    def _ensure_heartbeat(self) -> None:
        if self._hb_thread is not None and self._hb_thread.is_alive():
            return
        if self._hb_thread is not None:
            log.warning("starting a new heartbeat thread")
        self._hb_error = None
        self._hb_thread = threading.Thread(target=self._heartbeat_loop, name="mongotune-heartbeat", daemon=True)
        self._hb_thread.start()

    def _heartbeat_dead(self) -> bool:
        return self._hb_thread is not None and not self._hb_thread.is_alive() and not self._hb_stop.is_set()

    _hb_interval = 2.0

    # ------------------------------------------------------------ leases
    def _maybe_reap(self) -> None:
        now = time.monotonic()
        if now - self._last_reap < self.config.reap_every_s:
            return
        self._last_reap = now
        settings = {}
        for exp_key in self.trials.running_exp_keys():
            if self.config.study and exp_key != f"mongotune:{self.config.study}":
                continue
            study = self._study(exp_key)
            if study is not None:
                settings[exp_key] = (study.lease_s, study.max_attempts)
        self.trials.expire(settings)

    def _reserve(self) -> Lease | None:
        """Take a trial; every attempt uses a fresh token, and a retry first looks for what an attempt
        whose reply was lost may have taken."""
        keys = self._runnable_keys()
        if not keys:
            return None
        tokens: list[str] = []
        while True:
            try:
                if tokens:
                    held = self.trials.held_by(tokens)
                    if held is not None:
                        log.info("trial %s: found the reservation whose reply was lost", held.tid)
                        return held
                tokens.append(new_token())
                return self.trials.reserve(self.info, keys, tokens[-1])
            except Exception as exc:  # noqa: BLE001 - transient errors only; others propagate
                if not is_transient(exc):
                    raise
                self.retry.call(lambda: self.client.admin.command("ping"), "reserve trial")

    # ------------------------------------------------------------ spool: results waiting for the database
    def _spool_path(self, lease: Lease) -> Path:
        safe = lease.exp_key.replace(":", "_").replace("/", "_")
        return self.spool / f"{safe}-{lease.tid}-{lease.token}.json"

    def _spool_hook(self, point: str) -> None:
        """Tests kill a worker at a chosen point of spooling (``MONGOTUNE_TEST_SPOOL_PAUSE=POINT``): it
        leaves ``paused-POINT`` in the spool and waits there."""
        if os.environ.get(SPOOL_PAUSE_ENV) == point:
            (self.spool / f"paused-{point}").touch()
            time.sleep(3600)

    def _deliver(self, lease: Lease, result: dict, extra: dict) -> bool:
        """Write a finished result, kept on disk (and locked by this worker) until the database has it."""
        path = self._spool_path(lease)
        fd = _spool_write(path, {"exp_key": lease.exp_key, "tid": lease.tid, "token": lease.token,
                                 "attempt": lease.attempt, "result": encode(result), "extra": encode(extra)})
        try:
            self._spool_hook("spooled")
            ok = self.retry.call(lambda: self.trials.finish(lease, result, extra), "report result")
            path.unlink(missing_ok=True)
        finally:
            if fd is not None:
                os.close(fd)
        return ok

    def flush_spool(self) -> int:
        """Deliver the spooled results that no live worker is delivering (this host's earlier workers', or
        any worker's on a spool they share); return how many were taken.

        Each file is claimed with a lock the kernel drops when its holder dies,
        and deleted only once the database has the result: a kill at any point
        leaves it for the next flush.  An error leaves it there too; none
        escapes (the next flush, SPOOL_RETRY_S later, tries again).
        """
        self._spool_checked = time.monotonic()
        if not self.spool.is_dir():
            return 0
        _adopt_old_claims(self.spool)
        delivered = 0
        for path in sorted(self.spool.glob("*.json")):
            try:
                delivered += self._flush_one(path)
            except Exception as exc:  # noqa: BLE001 - the file stays for the next flush
                log.error("spooled result %s not delivered (%s: %s); trying again later", path.name,
                          type(exc).__name__, exc)
        return delivered

    def _flush_one(self, path: Path) -> int:
        fd = _claim(path)
        if fd is None:
            return 0  # delivered meanwhile, or another live worker is delivering it
        try:
            self._spool_hook("claimed")
            try:
                held = json.loads(_read_fd(fd))
                lease = Lease(None, int(held["tid"]), held["exp_key"], held["token"], int(held.get("attempt", 1)))
                result, extra = decode(held["result"]), decode(held.get("extra") or {})
            except (ValueError, KeyError, TypeError, ArithmeticError) as exc:
                bad = path.with_name(path.name + ".unreadable")
                log.warning("unreadable spooled result %s (%s): kept as %s", path.name, exc, bad.name)
                os.replace(path, bad)
                return 0
            ok = self.retry.call(lambda: self.trials.finish(lease, result, extra), "report result")
            self._spool_hook("delivered")
            path.unlink(missing_ok=True)
            log.info("trial %s: spooled result %s", lease.tid, "delivered" if ok else
                     "dropped (the trial was finished by another worker)")
            return int(ok)
        finally:
            os.close(fd)

    # ------------------------------------------------------------ loop
    def run(self) -> str:
        """Work until stopped; return why (``stopped``, ``idle-timeout``, ``max-trials``).

        A trial's own failures are recorded on it.  Anything else that goes
        wrong in the loop is logged, the trial (if one was taken) handed back,
        and the loop goes on after a pause; only a failure to join the pool at
        all (the registration refused) or the process's own end
        (KeyboardInterrupt, SystemExit) leaves ``run``.
        """
        self._join()
        reason = "stopped"
        try:
            reason = self._loop()
        finally:
            self._hb_stop.set()
            if self._hb_thread is not None:
                self._hb_thread.join(timeout=5)
            try:
                self.registry.stopped(self.id, reason)
            except pymongo.errors.PyMongoError:
                pass
            log.info("worker %s leaving: %s after %d trials", self.id, reason, self.trials_done)
        self.exit_reason = reason
        return reason

    def _join(self) -> None:
        info = {"_id": self.id, "host": self.host, "pid": os.getpid(), "gpu": self.config.gpu,
                "study": self.config.study,
                "exp_key": f"mongotune:{self.config.study}" if self.config.study else None,
                "allow_user_code": self.config.allow_user_code}
        from ..cluster.slurm import worker_identity as slurm_task

        slurm = slurm_task()
        if slurm:  # started by `mongotune slurm submit`: `slurm status` pairs it with its array task
            info["slurm"] = slurm
        self.retry.call(lambda: self.registry.register(info), "register worker")
        self.retry.call(self.registry.forget_dead, "forget dead workers")
        self._hb_stop.clear()
        self._ensure_heartbeat()
        self.flush_spool()
        log.info("worker %s joined (study: %s, gpu: %s, artifacts: %s)", self.id, self.config.study or "any",
                 self.config.gpu, self.artifacts_root)

    def _loop(self) -> str:
        idle_since, poll, failures = time.monotonic(), self.config.poll_min_s, 0
        while not self.stopping:
            if self.config.max_trials is not None and self.trials_done >= self.config.max_trials:
                return "max-trials"
            try:
                lease = self._next_lease()
                if lease is not None:
                    self._take(lease)
            except Exception as exc:  # noqa: BLE001 - not the trial's own failure: log, wait, go on
                failures += 1
                wait = min(60, 2 ** failures)
                log.error("worker error (%s: %s); going on in %ds", type(exc).__name__, exc, wait,
                          exc_info=not is_transient(exc) and not isinstance(exc, pymongo.errors.PyMongoError))
                self._stop.wait(wait)
                continue
            failures = 0
            if lease is None:
                if self.config.idle_timeout is not None and time.monotonic() - idle_since > self.config.idle_timeout:
                    return "idle-timeout"
                self._stop.wait(poll)
                poll = min(poll * 1.5, self.config.poll_max_s)
                continue
            idle_since, poll = time.monotonic(), self.config.poll_min_s
        return "stopped"

    def _next_lease(self) -> Lease | None:
        self._ensure_heartbeat()
        self.retry.call(self._maybe_reap, "requeue expired trials")
        if time.monotonic() - self._spool_checked > SPOOL_RETRY_S:
            self.flush_spool()
        return self._reserve()

    def _take(self, lease: Lease) -> None:
        """Run a reserved trial; should something other than the trial itself fail, hand the trial back."""
        try:
            self._run_trial(lease)
        except Exception as exc:
            try:
                self.trials.release(lease, f"worker error: {type(exc).__name__}: {str(exc)[:300]}")
            except Exception:  # noqa: BLE001 - then its lease expires
                pass
            raise

    # ------------------------------------------------------------ disk space
    def _keep_best_models(self, study: Study) -> None:
        """Delete the saved models of this host's trials that are not among the study's best K.

        Every trial keeps its params, history and curve; only the (large) model
        files go.  Each worker cleans its own host's files, so no host touches
        another's disk, and only inside its own roots: a trial's recorded path
        (written by anyone who can write to the database) is used only when it
        resolves to ``ROOT/STUDY/trial-N/attempt-N`` under a root this worker
        writes the study's artifacts to.
        """
        import re

        from .. import safepath
        from ..errors import ConfigError

        try:
            keep = (study.objective.get("training") or {}).get("keep_models")
            keep = None if keep is None else max(0, int(keep))
        except (TypeError, ValueError):
            return
        if keep is None:
            return
        roots = [self.artifacts_root]
        if study.artifacts_root and _under(study.artifacts_root, self.allowed_roots):
            roots.append(Path(os.path.expanduser(study.artifacts_root)))
        try:
            bases = {safepath.resolved(safepath.study_dir(r, study.name)) for r in roots}
            ranked = self.trials.ranked(study.exp_key, include_pruned=True,
                                        fields=["tid", "exp_key", "state", "result.loss", "result.status",
                                                "result.pruned", "artifacts"])
        except (ConfigError, OSError, pymongo.errors.PyMongoError):
            return  # a bad name never names a directory; the database: next time
        for rec in ranked[keep:]:
            if rec.artifacts is None or rec.artifacts.host != self.host:
                continue
            d = safepath.inside(str(rec.artifacts.path), bases)
            if (d is None or d.parent.parent not in bases or not re.fullmatch(r"trial-\d+", d.parent.name)
                    or not re.fullmatch(r"attempt-\d+", d.name)):
                log.warning("not deleting the model of trial %s: %s is not an attempt directory of study %s "
                            "in this worker's artifact roots", rec.tid, rec.artifacts.path, study.name)
                continue
            for name in MODEL_FILES:
                try:
                    (d / name).unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("cannot delete %s of trial %s: %s", name, rec.tid, exc)

    # ------------------------------------------------------------ one trial
    def _artifacts_dir(self, study: Study, lease: Lease) -> Path:
        """This attempt's own directory, ``ROOT/STUDY/trial-NNNNN/attempt-N``, created.

        The study name is checked here, on every use, not only at launch: a name
        from the database that is absolute, holds a separator or ``..``, or a
        directory that resolves outside the root (a symlink) fails the trial
        (kind ``config``) before anything is created.
        """
        from .. import safepath
        from ..errors import ConfigError

        root = self.artifacts_root
        if study.artifacts_root and _under(study.artifacts_root, self.allowed_roots):
            root = Path(os.path.expanduser(study.artifacts_root))
        try:
            base = safepath.study_dir(root, study.name)
            path = base / f"trial-{int(lease.tid):05d}" / f"attempt-{int(lease.attempt)}"
            if safepath.inside(path, [base]) is None:
                raise ConfigError(f"{path} resolves outside {base}")
            path.mkdir(parents=True, exist_ok=True)
            if safepath.inside(path, [base]) is None:
                raise ConfigError(f"{path} resolves outside {base}")
        except (ConfigError, TypeError, ValueError) as exc:
            raise TrialFailure("config", f"no artifact directory for this trial: {exc}") from None
        return path

    def _check_paths(self, study: Study) -> None:
        """Files a study names are read only inside this worker's allowed roots."""
        for p in kind_for_trial(study).local_paths(study):
            if not _under(p, self.allowed_roots):
                raise TrialFailure("config", f"the study names {p}, which is outside this worker's allowed "
                                             f"roots; start the worker with --allow-root DIR to allow it")

    def _pruner(self, study: Study) -> Pruner:
        if study.name not in self._pruners:
            try:
                max_epochs = kind_for_trial(study).max_epochs(study)
            except TrialFailure:  # a kind this worker does not know: the trial fails as config before it runs
                max_epochs = None
            self._pruners[study.name] = make_pruner(study.pruner, max_epochs)
            self._curves[study.name] = _CurveCache(self.trials, study)
        return self._pruners[study.name]

    def _must_report(self, study: Study, tid: int):
        """Steps whose reading the pruner needs as it is (ASHA's and Hyperband's rungs), or None: an
        objective that coalesces readings sends these at once, and a capped curve keeps them."""
        pruner = self._pruner(study)
        if not isinstance(pruner, ASHAPruner):
            return None
        return lambda step: pruner.decides_at(tid, int(step))

    def _report_step(self, lease: Lease, study: Study, pending: list, started: float, step: int,
                     value: float) -> bool:
        """Record one reading on the curve, then ask the pruner.  A reading the database cannot take
        right now is kept and written with the next one (no pruning decision meanwhile); past
        CURVE_MAX_POINTS kept readings, every other one of them goes (the first and the last stay)."""
        pending.append((int(step), float(value), time.monotonic() - started))
        if len(pending) > CURVE_MAX_POINTS:
            del pending[1:-1:2]
        keep = self._must_report(study, lease.tid)
        try:
            while pending:
                s, v, t = pending[0]
                if not REPORT_RETRY.call(lambda: self.trials.report(lease, s, v, t, keep=keep), "record a step"):
                    if not self.trials.has_step(lease, s):
                        lease.lost.set()  # the lease is gone: the trial stops
                        return False
                pending.pop(0)
            pruner = self._pruner(study)
            if pruner.name == "none" or not pruner.decides_at(lease.tid, int(step)):
                return False
            curves = REPORT_RETRY.call(self._curves[study.name].read, "read curves")
            prune, detail = pruner.decision(curves, lease.tid, int(step))
            if prune:
                self._pruned_by[lease.tid] = detail
                log.info("trial %s: pruned at step %s (%s: %s)", lease.tid, step, pruner.describe(), detail)
            return prune
        except Exception as exc:  # noqa: BLE001 - the database is away: train on, decide later
            if not is_transient(exc):
                raise
            log.warning("trial %s: step %s kept locally until the database is back", lease.tid, step)
            return False

    def _run_trial(self, lease: Lease) -> None:
        try:
            study = self._study(lease.exp_key)
        except (ValueError, TypeError, KeyError) as exc:  # a study document this worker cannot read
            study, why = None, f"cannot read the study document of {lease.exp_key}: {type(exc).__name__}: {exc}"
        else:
            why = f"no study document for {lease.exp_key}"
        if study is None:
            self._deliver(lease, failure_result("config", why[:500]), {})
            return
        self._hb_interval = self._heartbeat_interval(study)
        with self._lock:
            self._progress = None
            self._current = lease
        started = time.monotonic()
        pending: list = []
        best: dict = {}  # the best reading so far, for a pruned trial's loss
        log.info("trial %s of %s: start (attempt %d)", lease.tid, study.name, lease.attempt)
        art = None
        try:
            ctx = self._context(lease, study, pending, started, best)
            self._check_paths(study)
            art = self._artifacts_dir(study, lease)
            ctx.artifacts_dir = str(art)
            self.retry.call(lambda: self.trials.record_artifacts(lease, self.host, str(art)), "record artifacts")
            result = validate_result(kind_for_trial(study).run(study, lease.params, ctx))
        except TrialPruned as p:
            result = self._pruned_result(study, best.get("value"), p, self._pruned_by.pop(lease.tid, None))
        except TrialFailure as f:
            result = failure_result(f.kind, f.reason, traceback.format_exc() if f.kind == "exception" else None)
        except Exception as exc:  # noqa: BLE001 - trial-level failure: record and go on
            kind, reason = _classify(exc)
            result = failure_result(kind, reason, traceback.format_exc())
        self._pruned_by.pop(lease.tid, None)  # a prune answer that came after the objective's end
        duration = time.monotonic() - started
        extra = {"artifacts": {"host": self.host, "path": str(art)}} if art is not None else {}
        try:
            self._conclude(lease, study, result, duration, pending, extra)
        except Exception as exc:  # noqa: BLE001 - the result stays in the spool; a later flush delivers it
            log.error("trial %s: could not record its end (%s: %s); its result stays in %s", lease.tid,
                      type(exc).__name__, exc, self.spool)
        finally:
            with self._lock:
                self._current = None
                self._progress = None

    def _context(self, lease: Lease, study: Study, pending: list, started: float, best: dict) -> TrialContext:
        """What the objective gets: its stop question, its reporting and progress callbacks."""
        better = (lambda a, b: a > b) if study.goal == "max" else (lambda a, b: a < b)

        def report_step(step: int, value: float) -> bool:
            if "value" not in best or better(float(value), best["value"]):
                best["value"] = float(value)
            return self._report_step(lease, study, pending, started, step, value)

        def set_progress(info: dict) -> None:
            with self._lock:
                self._progress = encode(info)

        return TrialContext(
            tid=lease.tid, attempt=lease.attempt, study=study.name, gpu=self.config.gpu,
            should_stop=lambda: self.stopping or lease.lost.is_set() or self._heartbeat_dead(),
            report_step=report_step, set_progress=set_progress,
            extra={"must_report": self._must_report(study, lease.tid)})

    @staticmethod
    def _pruned_result(study: Study, best: float | None, p: TrialPruned, why: dict | None) -> dict:
        """A pruned trial's result: the objective's own (with its loss), or else the loss of its best
        reading so far (the metric negated when it is maximised); with the pruner's reasons."""
        result = dict(p.result or {})
        if why:
            result["pruned_by"] = why
        if "loss" not in result:
            best = best if best is not None else p.value
            result["loss"] = None if best is None else orient(best, study.goal)
            result.setdefault(study.metric.get("name", "metric"), best)
        result.update(status="ok", pruned=True, pruned_at=p.step)
        return validate_result(result)

    def _conclude(self, lease: Lease, study: Study, result: dict, duration: float, pending: list,
                  extra: dict) -> None:
        """Record how the attempt ended.  ``extra`` holds its artifacts: the result, the curve and the files
        of one attempt stay together, even when a result is taken after its lease expired."""
        tid = lease.tid
        if self._heartbeat_dead() and not lease.lost.is_set() and _interrupted(result):
            err = self._hb_error
            if self.retry.call(lambda: self.trials.release(
                    lease, f"heartbeat thread died: {type(err).__name__}: {err}"), "requeue trial"):
                log.warning("trial %s handed back to the queue (the heartbeat thread died)", tid)
            return
        if self.stopping and not lease.lost.is_set() and _interrupted(result):
            if self.retry.call(lambda: self.trials.release(lease, "worker shutdown"), "requeue trial"):
                log.info("trial %s handed back to the queue (worker shutting down)", tid)
            return
        if lease.lost.is_set() and _interrupted(result):
            log.warning("trial %s: lease lost, result discarded", tid)
            return
        for s, v, t in pending:  # readings the database could not take while the trial ran
            self.retry.call(lambda: self.trials.report(lease, s, v, t), "record a step")
        extra = {"duration_s": round(duration, 3), "worker": self.info, "owner": self.id, **extra}
        if self._deliver(lease, result, extra):
            self.trials_done += 1
            self._keep_best_models(study)
            if result.get("pruned"):
                log.info("trial %s: pruned at step %s, loss %.5g (%.1fs)", tid, result.get("pruned_at"),
                         result["loss"], duration)
            elif result.get("status") == "ok":
                log.info("trial %s: ok, loss %.5g (%.1fs)", tid, result["loss"], duration)
            else:
                log.warning("trial %s: failed (%s): %s", tid, result["failure"]["kind"], result["failure"]["reason"])
        else:
            log.warning("trial %s: finished by another worker first; result discarded", tid)


MODEL_FILES = ("model.keras",)


def _env_roots() -> list[str]:
    raw = os.environ.get("MONGOTUNE_ALLOWED_ROOTS", "")
    return [r for r in raw.split(os.pathsep) if r]


def _spool_write(path: Path, doc: dict) -> int | None:
    """``doc`` durably at ``path`` (written aside, fsynced, renamed into place), locked by this process:
    the open descriptor (close it to unlock), or None when the spool cannot be written (logged)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        log.warning("cannot spool a result to %s (%s); delivering it from memory", path, exc)
        return None
    try:
        data = memoryview(json.dumps(doc).encode())
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
        fcntl.flock(fd, fcntl.LOCK_EX)  # no flush elsewhere takes it while this worker delivers it
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return fd
    except OSError as exc:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        log.warning("cannot spool a result to %s (%s); delivering it from memory", path, exc)
        return None


def _claim(path: Path) -> int | None:
    """An open descriptor of ``path`` holding its lock, or None: gone, or locked by a live process."""
    try:
        fd = os.open(path, os.O_RDWR)  # for writing: NFS grants an exclusive lock only to a writer
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino != os.stat(path).st_ino:  # delivered and removed while we waited
            raise FileNotFoundError(path)
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None
    except OSError:
        os.close(fd)
        raise
    return fd


def _read_fd(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _adopt_old_claims(spool: Path) -> None:
    """Files an earlier mongotune claimed by renaming them to ``NAME.json.PID`` and never delivered (its
    worker died): back to ``NAME.json`` once that process is gone."""
    for old in spool.glob("*.json.[0-9]*"):
        pid = old.suffix[1:]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except OSError:
            continue
        try:
            os.replace(old, old.with_suffix(""))
        except OSError:
            pass


def _watch_lifeline(worker: "Worker") -> None:
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
        log.warning("the launch that started this worker has ended: handing the trial back and stopping")
        worker.request_stop()

    threading.Thread(target=watch, name="mongotune-lifeline", daemon=True).start()


def install_signal_handlers(worker, what: str = "trial", signals: tuple[str, ...] = ("SIGTERM", "SIGINT")) -> None:
    """First signal: hand the running ``what`` back and leave cleanly (``worker.request_stop()``);
    a second one: exit at once.  Shared by mongotune's workers and the hyperopt-style worker."""
    import signal

    def handler(signum, frame):
        if worker.stopping:
            os._exit(128 + signum)
        log.warning("signal %d: handing the running %s back and stopping (again to force)", signum, what)
        worker.request_stop()

    for name in signals:
        signal.signal(getattr(signal, name), handler)
