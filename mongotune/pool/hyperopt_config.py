"""The options of ``mongotune hyperopt-worker``, checked without pymongo or hyperopt (bad input answers at once)."""

from __future__ import annotations

from dataclasses import dataclass

from ..devices import cuda_visible_devices
from ..errors import ConfigError
from ..store._defaults import DEFAULT_LEASE_S, DEFAULT_MAX_ATTEMPTS
from ..store.studies import EXP_KEY_PREFIX

PICKLE_REFUSAL = ("hyperopt-worker runs objectives that hyperopt.fmin pickles into the database, and unpickling "
                  "runs whatever code anyone who can write to that database put there: pass --allow-pickle only "
                  "if you trust every writer of this database")


@dataclass
class HyperoptWorkerConfig:
    mongo: str  # mongodb://host:port/db, mongo://host:port/db[/jobs] or hyperopt's host:port/db
    exp_key: str | None = None  # None: jobs of any exp_key that is not a mongotune study's
    max_jobs: int | None = None  # None: no limit
    poll_interval: float = 1.0  # seconds between looks at an empty queue (jittered)
    reserve_timeout: float | None = 120.0  # leave after this long without a job; None: wait forever
    workdir: str | None = None  # None: the job's misc.workdir (or the cwd) / job id, as hyperopt does
    last_job_timeout: float | None = None  # reserve no job after this many seconds
    max_consecutive_failures: int = 4
    allow_pickle: bool = False
    gpu: str | None = None
    lease_s: float = DEFAULT_LEASE_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    reap_every_s: float = 5.0
    retry_max_wait_s: float = 300.0

    def validate(self) -> "HyperoptWorkerConfig":
        if not self.allow_pickle:
            raise ConfigError(PICKLE_REFUSAL)
        if self.exp_key is not None and self.exp_key.startswith(EXP_KEY_PREFIX):
            raise ConfigError(f"exp key {self.exp_key!r} belongs to a mongotune study: its trials are run by "
                              "`mongotune worker`")
        for name in ("poll_interval", "lease_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0")
        for name in ("reserve_timeout", "last_job_timeout"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0")
        if self.max_jobs is not None and self.max_jobs < 1:
            raise ConfigError("--max-jobs must be >= 1")
        if self.max_consecutive_failures < 1 or self.max_attempts < 1:
            raise ConfigError("--max-consecutive-failures and --max-attempts must be >= 1")
        if self.gpu is not None:
            cuda_visible_devices(self.gpu)
        return self
