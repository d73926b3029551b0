"""The stock-fmin kind: jobs that ``hyperopt.fmin(..., trials=mongotune.store.MongoTrials(...))`` queues.

They have no study document: their objective and search space travel inside the database, pickled by
hyperopt, and ``mongotune hyperopt-worker`` runs them.  Their metric is the loss the objective returns
(minimised); running one means unpickling code, so it is user code (``--allow-pickle``), and ``final``
has nothing to retrain.
"""

from __future__ import annotations

from typing import Callable

from ..errors import ConfigError, TrialFailure
from .kinds import ObjectiveKind

NAME = "hyperopt"


class StockFminKind(ObjectiveKind):
    name = NAME
    user_code = True
    seeded = False  # fmin's caller seeds its search

    def own_space(self, study) -> dict:
        raise ConfigError(f"{study.name!r}: stock fmin jobs carry their search space pickled, not as JSON")

    def describe(self, study) -> str:
        return "stock hyperopt fmin jobs"

    def run(self, study, params: dict, ctx):
        raise TrialFailure("config", "stock fmin jobs are run by `mongotune hyperopt-worker`, not `mongotune worker`")

    def job_objective(self, doc: dict, ctrl, allow_pickle: bool) -> Callable[[], dict]:
        """The job's objective, loaded (unpickled only with ``allow_pickle``), as a call that evaluates it at
        the job's point and returns its result as a document (a bare loss becomes ``{"status": "ok", ...}``)."""
        from hyperopt.base import SONify, spec_from_misc

        from ..store._hyperopt_worker import _load_objective

        fn = _load_objective(doc["misc"]["cmd"], ctrl, allow_pickle)
        spec = spec_from_misc(doc["misc"])

        def evaluate() -> dict:
            result = SONify(fn(spec, ctrl))
            return result if isinstance(result, dict) else {"status": "ok", "loss": result}

        return evaluate
