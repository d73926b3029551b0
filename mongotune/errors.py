"""Exception types shared by the whole package.

Two families matter to callers:

* ``UserError`` and its subclasses are mistakes a user can fix (a bad URL, an
  unknown model, a corrupt dataset file).  The CLI prints their message as one
  line and exits with code 2.
* ``TrialFailure`` is raised inside a trial (NaN loss, out of memory, a model
  that cannot be built).  Workers record it on the trial and move on.
"""

from __future__ import annotations


class MongotuneError(Exception):
    """Base class of every error raised on purpose by mongotune."""


class UserError(MongotuneError):
    """Something the user asked for cannot be done; the message says why."""

    exit_code = 2


class ConfigError(UserError):
    """Bad option values, bad search-space files, unknown model names."""


class ConnectionFailure(UserError):
    """A MongoDB URL that cannot be parsed or a server that cannot be reached."""


class StudyNotFound(UserError):
    """A study name that does not exist in the database."""


class DataError(UserError):
    """A dataset that is missing, fails its checksum, or is corrupt."""


class TrialFailure(MongotuneError):
    """A trial failed in a way that should be recorded, not crash the worker.

    ``kind`` is a short machine-readable tag: ``exception``, ``nan``, ``oom``,
    ``memory-guard``, ``lease`` ...
    """

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class TrialPruned(MongotuneError):
    """The pruner stopped a trial at ``step`` (its metric then read ``value``).

    Objectives raise it when ``ctx.report_step`` says stop; the worker records
    the trial as pruned (``result.pruned``), which counts toward the budget
    and is fed back to the search.
    """

    def __init__(self, step: int, value: float | None = None, result: dict | None = None):
        super().__init__(f"pruned at step {step}")
        self.step = int(step)
        self.value = value
        self.result = result  # the objective's own result so far (its loss, metrics), if it has one
