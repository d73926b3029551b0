"""hyperopt's ``MongoWorker`` and ``main_worker_helper``, on pymongo 4.

These run hyperopt-style jobs whose objective travels *inside* the database
(``cmd`` protocols such as ``domain_attachment``, a cloudpickled Domain).
Unpickling code from a database is remote code execution for whoever can
write to it, so those protocols are refused unless the worker is created
with ``allow_pickle=True``.  mongotune's own pool (``mongotune.worker``) never
unpickles anything: it rebuilds objectives from plain study documents.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time

import hyperopt.mongoexp as _hx  # imports fine on pymongo 4 (only its database calls are broken)
import numpy as np
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_ERROR, Ctrl, SONify, spec_from_misc
from hyperopt.utils import json_call

from ._jobs import MongoJobs
from ._trials import MongoTrials
from ._url import as_mongo_str

log = logging.getLogger("mongotune.store")


_WORKDIRS: dict[str, list] = {}  # path -> [jobs inside it, created by us, where the first came from]
_WORKDIRS_LOCK = threading.Lock()


@contextlib.contextmanager
def job_workdir(path: str, erase_created: bool = False):
    """Run a job inside ``path`` (created if missing), and come back even when the job raises.

    The working directory belongs to the whole process, so worker threads of
    one process that share a directory share it here: it is entered once,
    left when its last job ends, and erased then (``erase_created``) only if
    this process created it.  (hyperopt's ``temp_dir``/``working_dir`` erased
    it under a sibling thread still inside it, and did not come back after a
    job raised.)
    """
    with _WORKDIRS_LOCK:
        entry = _WORKDIRS.get(path)
        if entry is None:
            created = not os.path.isdir(path)
            os.makedirs(path, exist_ok=True)
            entry = _WORKDIRS[path] = [0, created, os.getcwd()]
        entry[0] += 1
        os.chdir(path)
    try:
        yield
    finally:
        with _WORKDIRS_LOCK:
            entry[0] -= 1
            if entry[0] == 0:
                del _WORKDIRS[path]
                os.chdir(entry[2])
                if erase_created and entry[1]:
                    shutil.rmtree(path, ignore_errors=True)


#: Job protocols that load code named or pickled by the database: unpickling, or importing and calling a
#: dotted name (``token_load``, ``bandit_json evaluate``).  Refused unless ``allow_pickle=True``.
PICKLE_PROTOCOLS = ("cpickled fn", "call evaluate", "driver_attachment", "domain_attachment", "token_load",
                    "bandit_json evaluate")


class ReserveTimeout(_hx.ReserveTimeout):
    """No job was reserved in the allotted time (a ``hyperopt.mongoexp.ReserveTimeout``)."""


class Shutdown(_hx.Shutdown):
    """The worker was told to stop by a signal (a ``hyperopt.mongoexp.Shutdown``)."""


class WaitQuit(_hx.WaitQuit):
    """A ``hyperopt.mongoexp.WaitQuit``."""


class PickleRefused(RuntimeError):
    """A job asked the worker to unpickle code and pickles were not allowed."""


class MongoCtrl(Ctrl):
    """The ``ctrl`` object an objective receives: checkpoints and attachments."""

    def __init__(self, trials, current_trial, read_only):
        self.trials = trials
        self.current_trial = current_trial
        self.read_only = read_only

    def debug(self, *args, **kwargs):
        return log.debug(*args, **kwargs)

    def info(self, *args, **kwargs):
        return log.info(*args, **kwargs)

    def warn(self, *args, **kwargs):
        return log.warning(*args, **kwargs)

    def error(self, *args, **kwargs):
        return log.error(*args, **kwargs)

    def checkpoint(self, result=None):
        if not self.read_only:
            handle = self.trials.handle
            handle.refresh(self.current_trial)
            if result is not None:
                return handle.update(self.current_trial, dict(result=result))

    @property
    def attachments(self):
        return self.trials.trial_attachments(trial=self.current_trial)


def _load_objective(cmd, ctrl, allow_pickle):
    import cloudpickle

    protocol = cmd[0]
    if protocol in PICKLE_PROTOCOLS and not allow_pickle:
        raise PickleRefused(
            f"job uses cmd protocol {protocol!r}, which loads code named or pickled by the database; "
            "start the worker with allow_pickle=True (--allow-pickle) if you trust every writer of this database"
        )
    if protocol == "cpickled fn":
        return cloudpickle.loads(cmd[1])
    if protocol == "call evaluate":
        return cloudpickle.loads(cmd[1]).evaluate
    if protocol == "token_load":
        module, _, attr = cmd[1].rpartition(".")
        import importlib

        return getattr(importlib.import_module(module), attr)
    if protocol == "bandit_json evaluate":
        return json_call(cmd[1]).evaluate
    if protocol == "driver_attachment":
        name, args, kwargs = cloudpickle.loads(ctrl.trials.attachments[cmd[1]])
        return json_call(name, args=args, kwargs=kwargs).evaluate
    if protocol == "domain_attachment":
        return cloudpickle.loads(ctrl.trials.attachments[cmd[1]]).evaluate
    raise ValueError("Unrecognized cmd protocol", protocol)


class MongoWorker:
    poll_interval = 3.0
    workdir = None

    def __init__(self, mj, poll_interval=poll_interval, workdir=workdir, exp_key=None,
                 logfilename="logfile.txt", allow_pickle=False):
        self.mj = mj
        self.poll_interval = poll_interval
        self.workdir = workdir
        self.exp_key = exp_key
        self.logfilename = logfilename
        self.allow_pickle = allow_pickle
        self._start_dir = os.getcwd()

    def make_log_handler(self):
        self.log_handler = logging.FileHandler(self.logfilename)
        self.log_handler.setFormatter(logging.Formatter(fmt="%(levelname)s (%(name)s): %(message)s"))
        self.log_handler.setLevel(logging.INFO)

    def run_one(self, host_id=None, reserve_timeout=None, erase_created_workdir=False):
        if host_id is None:
            host_id = ("%s:%i" % (socket.gethostname(), os.getpid()),)
        job = None
        start = time.time()
        while job is None:
            if reserve_timeout and (time.time() - start) > reserve_timeout:
                raise ReserveTimeout()
            job = self.mj.reserve(host_id, exp_key=self.exp_key)
            if not job:
                time.sleep(1 + np.random.rand() * max(float(self.poll_interval) - 1.0, 0.0))

        spec = spec_from_misc(job["misc"])
        ctrl = MongoCtrl(trials=MongoTrials(self.mj, exp_key=job["exp_key"], refresh=False),
                         read_only=False, current_trial=job)
        if self.workdir is None:
            workdir = job["misc"].get("workdir", self._start_dir) or ""
            workdir = os.path.join(workdir, str(job["_id"]))
        else:
            workdir = self.workdir
        # relative to where the worker started, not to whatever another job thread entered since
        workdir = os.path.normpath(os.path.join(self._start_dir, os.path.expanduser(workdir)))
        root_logger = logging.getLogger()
        try:
            if self.logfilename:
                self.make_log_handler()
                root_logger.addHandler(self.log_handler)
            try:
                worker_fn = _load_objective(job["misc"]["cmd"], ctrl, self.allow_pickle)
                with job_workdir(workdir, erase_created_workdir):
                    result = SONify(worker_fn(spec, ctrl))
            except BaseException as e:
                log.info("job exception: %s", e)
                ctrl.checkpoint()
                self.mj.update(job, {"state": JOB_STATE_ERROR, "error": (str(type(e)), str(e))})
                raise
        finally:
            if self.logfilename:
                root_logger.removeHandler(self.log_handler)
        attachments = result.pop("attachments", {})
        for aname, aval in list(attachments.items()):
            ctrl.attachments[aname] = aval
        ctrl.checkpoint(result)
        self.mj.update(job, {"state": JOB_STATE_DONE})


def _jobs_url(mongo: str) -> str:
    """``options.mongo`` naming a database, with hyperopt's ``/jobs`` added.

    The collection goes on the path, before any ``?options``.
    """
    url, q, query = as_mongo_str(mongo).partition("?")
    if url.count("/") < 4:
        url = url.rstrip("/") + "/jobs"
    return url + q + query


def number_of_jobs_in_db(options):
    mj = MongoJobs.new_from_connection_str(_jobs_url(options.mongo))
    return mj.jobs.count_documents({})


def main_worker_helper(options, args):
    """hyperopt-mongo-worker's loop (in-process; subprocess mode is not kept)."""
    n = int(options.max_jobs)
    end_time = time.time() + float(options.last_job_timeout) if options.last_job_timeout is not None else None
    allow_pickle = bool(getattr(options, "allow_pickle", False))

    def shutdown(signum, frame):
        raise Shutdown(signum)

    if os.name != "nt":
        signal.signal(signal.SIGHUP, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    signal.signal(signal.SIGTERM, shutdown)

    url = _jobs_url(options.mongo)

    def run_one():
        mj = MongoJobs.new_from_connection_str(url)
        MongoWorker(mj, float(options.poll_interval), workdir=options.workdir, exp_key=options.exp_key,
                    allow_pickle=allow_pickle).run_one(reserve_timeout=float(options.reserve_timeout))

    if n == 1:
        return run_one()
    if n <= 0:
        raise ValueError("N <= 0")
    cons_errs = 0
    while n and cons_errs < int(options.max_consecutive_failures):
        if end_time and time.time() > end_time:
            return
        if options.max_jobs_in_db is not None and options.max_jobs_in_db != sys.maxsize:
            if number_of_jobs_in_db(options) >= int(options.max_jobs_in_db):
                return
        try:
            run_one()
            cons_errs = 0
        except (Shutdown, WaitQuit):
            return 0
        except ReserveTimeout:
            raise
        except Exception:
            log.exception("job failed")
            cons_errs += 1
        n -= 1
