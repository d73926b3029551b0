"""The worker: reserve a trial, run it under a lease, report every step, record the end, repeat.

One ``Worker`` per GPU (or per CPU slot), on any host.  It stays in the pool
until told to stop (``idle_timeout``/``max_trials``, a signal, or
``request_stop``), so TensorFlow and the memory-mapped dataset stay loaded
between trials.  Every write to a trial goes through ``store.trialdoc``.
Registering, heartbeats, reservations, reaping and stopping are the lease
loop that ``mongotune hyperopt-worker`` shares (``pool.lease.LeaseWorker``);
this module runs a trial of a mongotune study: its objective, its curve and
pruning questions, its files, and its result (through the spool,
``pool.spool``).

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

import datetime
import logging
import os
import random
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pymongo

from .. import paths
from ..errors import TrialFailure, TrialPruned
from ..objectives import TrialContext, kind_for_trial, runs_user_code
from ..search.pruners import ASHAPruner, Pruner, StudyCurves, TrialCurve, make_pruner, orient
from ..store import RetryPolicy, encode, open_client
from ..store._connection import FOREVER, is_transient
from ..store._url import parse_mongo_url
from ..store.studies import Study, StudyStore
from ..store.trialdoc import CURVE_MAX_POINTS, Lease, RunCurve, TrialStore, failure_result, validate_result
from ..store.workers import WorkerRegistry
from .checkpoints import TrialCheckpoints
from .lease import LeaseWorker, heartbeat_interval, install_signal_handlers  # noqa: F401 (the CLI's import)
from .spool import Spool, spool_dir

log = logging.getLogger("mongotune.worker")

STUDIES_REFRESH_S = 2.0
REPORT_RETRY = RetryPolicy(max_wait_s=5.0, log_every_s=60.0)  # a curve point must not stall training for long


LONG_IDLE_LOOKS = 40  # about 10 s of looking at an empty queue
LONG_IDLE_MAX_S = 1.0


def idle_backoff(empty_looks: int, poll_min_s: float = 0.05, poll_max_s: float = 0.25) -> float:
    """Seconds an idle worker waits after its ``empty_looks``-th look in a row at an empty queue: from
    ``poll_min_s`` up to ``poll_max_s``; after about 10 s idle, up to ``LONG_IDLE_MAX_S``, jittered, so a
    pool of hundreds of idle workers does not poll the server in step (``bench/bench_scale.py``)."""
    wait = min(poll_min_s * 1.5 ** min(empty_looks, 60), poll_max_s)
    if empty_looks <= LONG_IDLE_LOOKS:
        return wait
    longer = min(poll_max_s * 1.1 ** (empty_looks - LONG_IDLE_LOOKS), max(LONG_IDLE_MAX_S, poll_max_s))
    return max(wait, longer * random.uniform(0.5, 1.0))


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


class _CurveCache:
    """The study's curves as a pruner sees them, read incrementally through the trial store.

    Finished trials never change, so they are read once (those finished since
    the last read, by ``refresh_time``); running trials are read every time.
    """

    def __init__(self, trials: TrialStore, study: Study):
        self.trials, self.study = trials, study
        self.done: dict[int, TrialCurve] = {}
        self.since = None

    def _curve(self, run: RunCurve) -> TrialCurve:
        values = {p["step"]: orient(p["value"], self.study.goal) for p in run.points}
        return TrialCurve(run.tid, values, run.finished, run.pruned)

    def read(self) -> StudyCurves:
        finished, newest = self.trials.finished_curves(self.study.exp_key, self.since)
        for run in finished:
            self.done[run.tid] = self._curve(run)
        if newest is not None:  # writes stamped just before the newest one may become visible just after it
            self.since = newest - datetime.timedelta(seconds=2)
        curves = StudyCurves(dict(self.done))
        for run in self.trials.running_curves(self.study.exp_key):
            curves.trials[run.tid] = self._curve(run)
        return curves


class Worker(LeaseWorker):
    """A worker of mongotune's studies (see the module docstring); its loop is ``LeaseWorker``'s."""

    def __init__(self, config: WorkerConfig):
        self.config = config
        super().__init__(gpu=config.gpu, reap_every_s=config.reap_every_s, idle_timeout=config.idle_timeout)
        self.retry = FOREVER
        parsed = parse_mongo_url(config.url)  # a malformed URL fails now, with one line
        self.client, self.db, self.parsed = open_client(parsed, check=False)
        self.retry.call(lambda: self.client.admin.command("ping"), "connect")
        self.trials = TrialStore(self.db, self.db[self.parsed.collection])
        self.studies = StudyStore(self.db)
        self.registry = WorkerRegistry(self.db)
        self.artifacts_root = Path(os.path.expanduser(config.artifacts)) if config.artifacts else paths.artifacts_dir()
        self.spool = Spool(spool_dir(config.spool_dir), self.trials, self.retry)
        from ..data import default_cache_dir

        self.allowed_roots = [Path(os.path.expanduser(r)).resolve() for r in
                              [*config.allowed_roots, *_env_roots(), str(default_cache_dir()), str(self.artifacts_root)]]
        self._study_cache: dict[str, tuple[float, Study]] = {}
        self._keys: tuple[float, list[str]] = (-1e9, [])
        self._told_skip: list[str] | None = None
        self._curves: dict[str, _CurveCache] = {}
        self._pruners: dict[str, Pruner] = {}
        self._pruned_by: dict[int, dict] = {}  # tid -> why the pruner stopped it
        self._stores: dict[str, object] = {}  # study name -> its artifact store (store.artifacts)
        self._checkpoints: dict[int, TrialCheckpoints] = {}  # tid -> the running trial's checkpoints

    # ------------------------------------------------------------ the lease loop's questions
    def registration(self) -> dict:
        study = self.config.study
        return {"study": study, "exp_key": f"mongotune:{study}" if study else None,
                "allow_user_code": self.config.allow_user_code}

    def joined(self) -> None:
        self.flush_spool()
        log.info("worker %s joined (study: %s, gpu: %s, artifacts: %s)", self.id, self.config.study or "any",
                 self.config.gpu, self.artifacts_root)

    def limit(self) -> str | None:
        if self.config.max_trials is not None and self.trials_done >= self.config.max_trials:
            return "max-trials"
        return None

    def housekeeping(self) -> None:
        if self.spool.due():
            self.flush_spool()

    def idle_wait(self, empty_looks: int) -> float:
        return idle_backoff(empty_looks, self.config.poll_min_s, self.config.poll_max_s)

    def lease_terms(self, exp_key) -> tuple[float, int] | None:
        if self.config.study and exp_key != f"mongotune:{self.config.study}":
            return None
        study = self._study(exp_key)
        return None if study is None else (study.lease_s, study.max_attempts)

    def runnable_keys(self) -> list[str]:
        """The studies whose trials this worker takes (refreshed every few seconds)."""
        at, keys = self._keys
        if time.monotonic() - at < STUDIES_REFRESH_S:
            return keys
        if self.config.study:
            study = self.retry.call(lambda: self.studies.find(self.config.study), "load study")
            docs = {study.exp_key: study.objective} if study else {}
        else:
            docs = self.retry.call(self.studies.objectives, "list studies")
        keys = [k for k, obj in docs.items() if self.config.allow_user_code or not runs_user_code(obj)]
        skipped = sorted(set(docs) - set(keys))
        if skipped and skipped != self._told_skip:
            self._told_skip = skipped
            log.info("not taking trials of %s: they run user code (start the worker with --allow-user-code "
                     "to allow it)", ", ".join(k.split(":", 1)[-1] for k in skipped))
        self._keys = (time.monotonic(), keys)
        return keys

    def flush_spool(self) -> int:
        """Deliver the spooled results no live worker is delivering (``Spool.flush``); how many were taken."""
        return self.spool.flush()

    # ------------------------------------------------------------ studies
    def _study(self, exp_key: str) -> Study | None:
        hit = self._study_cache.get(exp_key)
        if hit and time.monotonic() - hit[0] < 10:
            return hit[1]
        study = self.retry.call(lambda: self.studies.by_exp_key(exp_key), "load study")
        if study is not None:
            self._study_cache[exp_key] = (time.monotonic(), study)
        return study

    def _heartbeat_interval(self, study: Study) -> float:
        return self.config.heartbeat_s or heartbeat_interval(study.lease_s)

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
                                                "result.pruned", "result.constraints", "artifacts"])
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

    # ------------------------------------------------------------ a trial's files and pruning questions
    def _artifacts_dir(self, study: Study, lease: Lease) -> Path:
        """This attempt's own directory, ``ROOT/STUDY/trial-NNNNN/attempt-N``, created.

        The study name is checked here, on every use, not only at launch: a name
        from the database that is absolute, holds a separator or ``..``, or a
        directory that resolves outside the root (a symlink) fails the trial
        (kind ``config``) before anything is created.
        """
        from .. import safepath
        from ..errors import ConfigError

        root = self._local_root(study)
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

    def _local_root(self, study: Study) -> Path:
        """Where this worker writes the study's files: the study's shared root if it may, else its own."""
        if study.artifacts_root and _under(study.artifacts_root, self.allowed_roots):
            return Path(os.path.expanduser(study.artifacts_root))
        return self.artifacts_root

    def _trial_checkpoints(self, study: Study, lease: Lease) -> TrialCheckpoints | None:
        """The trial's checkpoints in the study's artifact store (opened once per study), or None if it has
        none this worker can open (the trial then runs without)."""
        from ..errors import ConfigError
        from ..store.artifacts import ArtifactError, open_store

        if study.name not in self._stores:
            try:
                self._stores[study.name] = open_store(study.artifact_store, self.db, study.name,
                                                      self._local_root(study))
            except (ArtifactError, ConfigError) as exc:
                log.warning("study %s: no checkpoints: %s", study.name, exc)
                self._stores[study.name] = None
        store = self._stores[study.name]
        cp = None if store is None else TrialCheckpoints(store, self.trials, lease, self.retry)
        if cp is not None:
            self._checkpoints[lease.tid] = cp
        return cp

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

    # ------------------------------------------------------------ one trial
    def run_lease(self, lease: Lease) -> None:
        try:
            study = self._study(lease.exp_key)
        except (ValueError, TypeError, KeyError) as exc:  # a study document this worker cannot read
            study, why = None, f"cannot read the study document of {lease.exp_key}: {type(exc).__name__}: {exc}"
        else:
            why = f"no study document for {lease.exp_key}"
        if study is None:
            self.spool.deliver(lease, failure_result("config", why[:500]), {})
            return
        self.heartbeat_s = self._heartbeat_interval(study)
        started = time.monotonic()
        pending: list = []
        log.info("trial %s of %s: start (attempt %d)", lease.tid, study.name, lease.attempt)
        result, art = self._attempt(lease, study, pending, started)
        duration = time.monotonic() - started
        extra = {"artifacts": {"host": self.host, "path": str(art)}} if art is not None else {}
        try:
            self._conclude(lease, study, result, duration, pending, extra)
        except Exception as exc:  # noqa: BLE001 - the result stays in the spool; a later flush delivers it
            log.error("trial %s: could not record its end (%s: %s); its result stays in %s", lease.tid,
                      type(exc).__name__, exc, self.spool.dir)

    def _attempt(self, lease: Lease, study: Study, pending: list, started: float) -> tuple[dict, Path | None]:
        """Run the study's objective on the trial's params: its result (ok, failed or pruned) and its
        artifact directory (None if it failed before it had one)."""
        best: dict = {}  # the best reading so far, for a pruned trial's loss
        art = None
        try:
            ctx = self._context(lease, study, pending, started, best)
            self._check_paths(study)
            art = self._artifacts_dir(study, lease)
            ctx.artifacts_dir = str(art)
            ctx.checkpoints = self._trial_checkpoints(study, lease)
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
        return result, art

    def _context(self, lease: Lease, study: Study, pending: list, started: float, best: dict) -> TrialContext:
        """What the objective gets: its stop question, its reporting and progress callbacks."""
        better = (lambda a, b: a > b) if study.goal == "max" else (lambda a, b: a < b)

        def report_step(step: int, value: float) -> bool:
            if "value" not in best or better(float(value), best["value"]):
                best["value"] = float(value)
            return self._report_step(lease, study, pending, started, step, value)

        def set_progress(info: dict) -> None:
            self.set_progress(encode(info))

        return TrialContext(
            tid=lease.tid, attempt=lease.attempt, study=study.name, gpu=self.config.gpu,
            should_stop=lambda: self.stopping or lease.lost.is_set() or self.heartbeat_dead(),
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
        checkpoints = self._checkpoints.pop(tid, None)
        if self.heartbeat_dead() and not lease.lost.is_set() and _interrupted(result):
            err = self.heartbeat_error
            self.hand_back(lease, f"heartbeat thread died: {type(err).__name__}: {err}", "the heartbeat thread died",
                           logging.WARNING)
            return
        if self.stopping and not lease.lost.is_set() and _interrupted(result):
            self.hand_back(lease, "worker shutdown", "worker shutting down")
            return
        if lease.lost.is_set() and _interrupted(result):
            log.warning("trial %s: lease lost, result discarded", tid)
            return
        for s, v, t in pending:  # readings the database could not take while the trial ran
            self.retry.call(lambda: self.trials.report(lease, s, v, t), "record a step")
        extra = {"duration_s": round(duration, 3), "worker": self.info, "owner": self.id, **extra}
        if self.spool.deliver(lease, result, extra):
            self.trials_done += 1
            if checkpoints is not None:
                checkpoints.discard()
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
