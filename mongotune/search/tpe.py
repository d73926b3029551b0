"""TPE that knows about trials still in flight (queued or running on a worker).

``suggest`` is hyperopt's own TPE (``hyperopt.tpe.suggest``, unchanged),
given a view of the trials chosen here:

* **Pending trials (queued or running, no loss yet) enter the model with a
  constant lie: the worst possible loss.**  TPE only uses the *rank* of the
  losses, to split the trials into the best ``gamma`` fraction (the density
  l(x) that candidates are drawn from) and the rest (g(x)); candidates are
  scored by l(x)/g(x).  A pending trial therefore lands in g(x), and every
  point near it scores lower, so the next suggestion moves away from what is
  already being tried.  Any lie worse than every observed loss gives the same
  model; +inf (what hyperopt writes for a trial without a loss) is used so a
  pending trial can never tie with, and displace, a real result from l(x).
  A "mean" lie was rejected: with TPE's split (about ``gamma * sqrt(n)`` trials
  in l(x)) a mean loss also ranks in g(x) in all but the smallest studies, so
  it only adds a way to put an unfinished trial among the best.
  hyperopt's TPE already reads a trial without a loss as +inf; what this
  module adds is that the lie is a deliberate, switchable choice
  (``constant_liar=False`` hides pending trials from the model, the behaviour
  of samplers without a liar) and that the other two points below hold.
* **Failed trials** (status ``fail``, or an ok status with a NaN/inf loss) rank
  after every real loss, as in hyperopt: a region that crashes or runs out of
  memory is a bad region.
* **The random start**: the first ``startup_trials`` trials of a study
  (queued, running and finished ones all count, so exactly that many are
  random whatever the number of workers) are drawn from the prior, and so is
  every suggestion made before the first successful result is in.
* **Several ids at once**: one trial per new id, each suggested with the ones
  before it in the batch counted as pending (hyperopt's ``tpe.suggest``
  returns only the first id's trial).

Use with stock hyperopt: ``fmin(..., algo=functools.partial(mongotune.search.tpe.suggest, startup_trials=10))``.
"""

from __future__ import annotations

from hyperopt import rand
from hyperopt import tpe as _hyperopt_tpe

from ._trials import TrialsView, finite_loss, is_pending, one_at_a_time

DEFAULT_STARTUP = 20  # hyperopt's n_startup_jobs


def _lied(doc: dict) -> dict:
    """A pending trial as the model sees it: no loss (hyperopt's +inf)."""
    if (doc.get("result") or {}).get("loss") is None:
        return doc
    return {**doc, "result": {"status": "new"}}


def suggest(new_ids, domain, trials, seed, *, startup_trials: int = DEFAULT_STARTUP, constant_liar: bool = True,
            n_ei_candidates: int = 24, gamma: float = 0.25, prior_weight: float = 1.0):
    """hyperopt-compatible suggest: one new trial document per id in ``new_ids``."""

    def one(new_id, domain, view, s):
        docs = list(view.trials)
        if len(docs) < startup_trials or not any(finite_loss(d) is not None for d in docs):
            return rand.suggest([new_id], domain, view, s)
        if constant_liar:
            model = [_lied(d) if is_pending(d) else d for d in docs]
        else:
            model = [d for d in docs if not is_pending(d)]
        return _hyperopt_tpe.suggest([new_id], domain, TrialsView(view, model), s, prior_weight=prior_weight,
                                     n_startup_jobs=0, n_EI_candidates=n_ei_candidates, gamma=gamma,
                                     verbose=False)

    return one_at_a_time(one, new_ids, domain, trials, seed)
