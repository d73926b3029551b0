"""Optuna's TPE behind hyperopt's ``suggest`` interface, with duplicates refused: mongotune's default search.

``suggest(new_ids, domain, trials, seed, ...)`` is a hyperopt algorithm like
``hyperopt.tpe.suggest``, so stock ``hyperopt.fmin`` code and mongotune's
coordinator both use it.  Underneath, the hyperopt space is translated into
Optuna distributions (``optuna_space``), the trials into an in-memory Optuna
study kept up to date between calls (``optuna_mirror``), and Optuna's
``TPESampler`` proposes the point:

* **multivariate** (Optuna 5's default): the parameters are modelled jointly;
  on a conditional space (nested ``hp.choice``) the parameters that are
  active together form groups (``group=True``), each modelled jointly.
* **pending trials** (queued or running) enter as Optuna ``RUNNING`` trials
  and, with ``constant_liar`` (default), count as bad results, so workers
  asking at the same time get points away from each other's.
* **pruned trials** rank after every complete trial, by the step they reached
  and then by their loss (Optuna's rule); **failed trials** rank after every
  other (see ``optuna_mirror``).
* **no point twice** (``dedupe``, default): in a space of finitely many
  values (ordinal and categorical dimensions, as in the public benchmark
  tables) TPE keeps proposing the configuration it is surest of; here a
  candidate equal to a trial already finished, queued or running is passed
  over for the next best of TPE's candidates, then the sampler is asked again,
  then the prior is; only a space with no untried point left gets a repeat.
  On the ten tables of ``bench/bench_search.py`` this is what puts the
  default ahead of Optuna's own TPE (see the README's tables).

With ``fidelity="rung"`` (a BOHB-style option for pruned studies) the model
is fitted to the readings at the highest step enough trials reached
(``fidelity``).

Several ids in one call are proposed in turn, each seeing the earlier ones as
pending.  The first ``startup_trials`` finished trials come from Optuna's
random sampler (Optuna counts finished trials; a parallel start draws a few
more at random).  A suggestion costs one incremental sync of the mirror plus
one TPE sample: about 5 ms at 100 finished trials and 15-30 ms at 1,000 (the
README has the measured numbers); beyond ``max_trials`` finished trials, the
sampler sees the best half and the most recent others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._trials import seeds_for
from .dims import dimensions, new_docs, point_key, prior_samples
from .fidelity import at_highest_rung
from .optuna_mirror import StudyMirror
from .optuna_space import OptunaSpace

DEFAULT_STARTUP = 10
DEFAULT_GAMMA = 0.15  # the "good" trials: this fraction of the finished ones, at most 25 (Optuna: 0.10; see the README)
RESAMPLES = 4  # asks of the sampler for a point not tried yet, before the prior is asked
PRIOR_DRAWS = 64  # prior draws for such a point, then (small discrete spaces) every point is looked at
ENUMERATE_UP_TO = 100_000  # points in a discrete space worth listing to find one not tried


def _dedupe_sampler_class():
    """``TPESampler`` that passes over candidates equal to a point already tried (flat spaces)."""
    from optuna.samplers import TPESampler

    class DedupeTPESampler(TPESampler):
        taken: set = set()  # internal-representation tuples (sorted labels) of every point tried
        full_labels: tuple = ()  # the labels a whole point has (flat spaces only; empty: no candidate filter)

        def _compute_acquisition_func(self, samples, mpe_below, mpe_above):
            scores = super()._compute_acquisition_func(samples, mpe_below, mpe_above)
            labels = tuple(sorted(samples))
            if not self.taken or labels != self.full_labels:
                return scores
            columns = [np.asarray(samples[k], dtype=float) for k in labels]
            seen = np.fromiter((tuple(float(c[i]) for c in columns) in self.taken
                                for i in range(len(scores))), dtype=bool, count=len(scores))
            if seen.all():
                return scores  # every candidate was tried: the caller asks again
            return np.where(seen, -np.inf, scores)

    return DedupeTPESampler


@dataclass
class _Search:
    """What one search keeps between calls: the mirror of its trials and its sampler."""

    space: OptunaSpace
    mirror: StudyMirror
    sampler: object


def _sampler(space: OptunaSpace, options: dict, seed: int):
    """Optuna's TPE (with the candidate filter) or, for ``sampler="nsga2"``, its NSGA-II."""
    if options.get("sampler") == "nsga2":
        from optuna.samplers import NSGAIISampler

        return NSGAIISampler(seed=seed, population_size=options["population_size"])
    cls = _dedupe_sampler_class()
    group = options["group"] if options["group"] is not None else space.conditional
    fraction = options["gamma"]
    sampler = cls(seed=seed, n_startup_trials=options["startup_trials"], n_ei_candidates=options["n_ei_candidates"],
                  multivariate=options["multivariate"] or group, group=group,
                  constant_liar=options["constant_liar"], gamma=lambda n: min(math.ceil(fraction * n), 25))
    return sampler


def _reseed(sampler, seed: int) -> None:
    """The sampler draws from ``seed`` from now on (fmin gives every call its own seed)."""
    sampler._rng.rng.seed(seed)
    sampler._random_sampler._rng.rng.seed(seed)


def _search_for(domain, trials, options: dict, seed: int) -> _Search:
    """This search's state, kept on the ``trials`` object (one per space and set of options)."""
    dims = dimensions(domain)
    owner = _owner(trials)
    cache = owner.__dict__.setdefault("_mongotune_optuna", {})
    key = (tuple(dims), tuple(sorted(options.items())))
    found = cache.get(key)
    if found is None:
        import warnings

        space = OptunaSpace(dims)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning for group=True
            sampler = _sampler(space, options, seed)
        mirror = StudyMirror(space, max_trials=options["max_trials"], objectives=options["objectives"])
        found = cache[key] = _Search(space, mirror, sampler)
    return found


def _owner(trials):
    """The real ``Trials`` behind mongotune's views of it (state is kept there, not on a throw-away view)."""
    for attr in ("_base", "_trials"):
        inner = getattr(trials, attr, None)
        if inner is not None and hasattr(inner, "trials"):
            return _owner(inner)
    return trials


def suggest(new_ids, domain, trials, seed, *, startup_trials: int = DEFAULT_STARTUP, constant_liar: bool = True,
            multivariate: bool = True, group: bool | None = None, n_ei_candidates: int = 24, dedupe: bool = True,
            max_trials: int = 2000, fidelity: str = "final", goal: str = "min", gamma: float = DEFAULT_GAMMA,
            objectives: int = 1):
    """hyperopt-compatible suggest: one new trial document per id in ``new_ids``.

    ``fidelity="rung"``: fit the model to every finished trial's best reading up to the highest step that
    enough of them reached (``fidelity.at_highest_rung``; BOHB-style), reading curves with ``goal``.
    ``objectives`` > 1: each result holds ``losses`` (one per objective, lower is better) and the model
    is Optuna's multi-objective TPE (pruned trials then rank with the infeasible ones).
    """
    options = {"startup_trials": startup_trials, "constant_liar": constant_liar, "multivariate": multivariate,
               "group": group, "n_ei_candidates": n_ei_candidates, "dedupe": dedupe, "max_trials": max_trials,
               "fidelity": fidelity, "goal": goal, "gamma": gamma, "objectives": objectives}
    return _suggest(new_ids, domain, trials, seed, options)


def nsga2_suggest(new_ids, domain, trials, seed, *, objectives: int = 2, population_size: int = 50,
                  dedupe: bool = True, max_trials: int = 2000):
    """hyperopt-compatible suggest through Optuna's NSGA-II (a genetic search for the Pareto front)."""
    options = {"sampler": "nsga2", "objectives": objectives, "population_size": population_size, "dedupe": dedupe,
               "max_trials": max_trials, "fidelity": "final", "startup_trials": 0}
    return _suggest(new_ids, domain, trials, seed, options)


def _suggest(new_ids, domain, trials, seed, options: dict) -> list:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = _search_for(domain, trials, options, seed)
    docs = list(trials.trials)
    if options["fidelity"] == "rung":
        docs = at_highest_rung(docs, options["goal"], max(options["startup_trials"], len(search.space.params) + 2))
    search.mirror.sync(docs)
    out: list = []
    new_ids = list(new_ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental/independent-sampling warnings, once per trial
        for new_id, s in zip(new_ids, seeds_for(seed, len(new_ids))):
            assignment = _propose(search, domain, new_id, s, options["dedupe"])
            out.extend(new_docs(trials, domain, new_id, assignment))
    return out


def _propose(search: _Search, domain, new_id: int, seed: int, dedupe: bool) -> dict:
    """One new point (hyperopt assignment) for the search, recorded as pending in its mirror."""
    from optuna.trial import TrialState

    sampler, study = search.sampler, search.mirror.study
    _reseed(sampler, seed)
    study.sampler = sampler
    taken = search.mirror.keys() if dedupe else set()
    sampler.taken = search.mirror.internal_keys() if dedupe else set()
    sampler.full_labels = search.space.flat_labels
    for _ in range(RESAMPLES if dedupe else 1):
        trial = study.ask()
        assignment = search.space.sample(trial)
        if point_key(assignment) not in taken:
            break
        study.tell(trial, state=TrialState.FAIL)  # a repeat: forget it, ask again
    else:
        assignment = _untried_point(domain, search.space, taken, seed) or assignment
        trial = _enqueued(study, search.space, assignment)
    search.mirror.asked(new_id, trial, assignment)
    return assignment


def _untried_point(domain, space: OptunaSpace, taken: set, seed: int) -> dict | None:
    """A point nobody tried: from the prior, else (a small discrete space) any one left; None if none is."""
    rng = np.random.default_rng(seed)
    for point in prior_samples(domain, PRIOR_DRAWS, rng):
        if point_key(point) not in taken:
            return point
    if not space.discrete:
        return None
    from . import grid

    if grid.grid_size(domain.expr) > ENUMERATE_UP_TO:
        return None
    left = [p for p in grid.points(domain.expr) if point_key(p) not in taken]
    return left[int(rng.integers(len(left)))] if left else None


def _enqueued(study, space: OptunaSpace, assignment: dict):
    """A RUNNING trial at ``assignment`` (a point chosen outside the sampler)."""
    fitted = space.trial_params(assignment)
    params = fitted[0] if fitted else {}
    study.enqueue_trial(params, skip_if_exists=False)
    trial = study.ask()
    space.sample(trial)  # the enqueued values are taken, so the trial holds the point
    return trial


__all__ = ["DEFAULT_STARTUP", "nsga2_suggest", "suggest"]
