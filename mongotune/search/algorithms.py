"""The search algorithms by name, with their options checked.

Every algorithm is a hyperopt ``suggest(new_ids, domain, trials, seed)``
function that returns one new trial document per id (fewer, or none, only
when grid search has run out of points), so each works with stock
``hyperopt.fmin`` and with mongotune's coordinator alike::

    from hyperopt import fmin
    from mongotune.search.algorithms import make_suggest
    algo = make_suggest("gp", {"acquisition": "ucb", "kappa": 2.5})
    fmin(objective, space, algo=algo, max_evals=50)

Algorithms and their options (default in brackets):

* ``optuna-tpe``, **the default** (``DEFAULT``): Optuna's multivariate TPE
  (grouped on conditional spaces) behind hyperopt's suggest interface;
  pending trials enter as running ones (constant liar), pruned ones ranked by
  the step they reached, failed ones after all others, no point proposed
  twice (``mongotune.search.optuna_tpe``).  ``fidelity="rung"`` fits the
  model to the highest step enough trials reached (BOHB-style, for pruned
  studies; ``goal`` is the direction of the curves, which the coordinator
  sets from the study).  Options: startup_trials (10), constant_liar (true),
  multivariate (true), group (none: true on conditional spaces),
  n_ei_candidates (24), dedupe (true), max_trials (2000), fidelity (final),
  goal (min), gamma (0.15: the best 15 % of the finished trials, at most 25,
  make the "good" density), objectives (1; more: each result holds
  ``losses``, one per objective, and the model is Optuna's multi-objective
  TPE).
* ``nsga2``: Optuna's NSGA-II for several objectives (results hold
  ``losses``), behind the same adapter (no point twice, pending trials
  seen).  Options: objectives (2), population_size (50), dedupe (true),
  max_trials (2000).
* ``tpe``: hyperopt's TPE; pending trials enter with a constant lie (the
  worst loss), so parallel workers get distinct points
  (``mongotune.search.tpe``).  Options: startup_trials (20), constant_liar
  (true), n_ei_candidates (24), gamma (0.25), prior_weight (1).
* ``rand``: hyperopt's random search.  No options.
* ``anneal``: hyperopt's simulated annealing, one id at a time.  Options:
  avg_best_idx (2), shrink_coef (0.1).
* ``grid``: every combination; ``[]`` when exhausted
  (``mongotune.search.grid``).  Options: grid_points (none: a space with
  continuous dimensions needs it).
* ``gp``: Gaussian-process BO with EI or UCB (``mongotune.search.gp``).
  Options: acquisition (ei), kappa (2, ucb only), xi (0.01, ei only),
  startup_trials (10), n_candidates (1000), constant_liar (true),
  max_observations (300).

``DEFAULT`` is the one ``mongotune launch`` uses without ``--algo``: on the
ten public tables of ``bench/bench_search.py`` it ends 50 and 100 trials with
lower regret than Optuna's own default TPESampler, sequentially and with 4 and
16 asynchronous workers (the README has the numbers).

Options whose value is ``None`` count as not given (so a CLI can pass every
flag through).  Anything else that is wrong (an unknown algorithm or option,
an option of another algorithm, a value out of range, a grid over a continuous
dimension without ``grid_points``) raises ``ConfigError`` with one line.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from hyperopt import anneal as _anneal
from hyperopt import rand as _rand

from ..errors import ConfigError
from . import defaults, gp, grid, optuna_tpe, tpe
from ._trials import one_at_a_time
from .dims import dimensions

Suggest = Callable[[list, Any, Any, int], list]


def anneal_suggest(new_ids, domain, trials, seed, *, avg_best_idx: float = 2.0, shrink_coef: float = 0.1):
    """hyperopt's annealing for any number of ids (its own ``suggest`` refuses more than one)."""

    def one(new_id, domain, view, s):
        return _anneal.suggest([new_id], domain, view, s, avg_best_idx=avg_best_idx, shrink_coef=shrink_coef)

    return one_at_a_time(one, new_ids, domain, trials, seed)


# ---------------------------------------------------------------- option checks
def _int(minimum: int):
    def check(key, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < minimum:
            raise ConfigError(f"search option {key}={value!r}: must be an integer >= {minimum}")
        return int(value)
    return check


def _float(minimum: float, maximum: float | None = None, *, open_low: bool = False):
    def check(key, value):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
        ok = ok and (value > minimum if open_low else value >= minimum) and (maximum is None or value < maximum)
        if not ok:
            bound = f"{'>' if open_low else '>='} {minimum:g}" + (f" and < {maximum:g}" if maximum is not None else "")
            raise ConfigError(f"search option {key}={value!r}: must be a number {bound}")
        return float(value)
    return check


def _bool(key, value):
    if not isinstance(value, bool):
        raise ConfigError(f"search option {key}={value!r}: must be true or false")
    return value


def _one_of(*choices):
    def check(key, value):
        if value not in choices:
            raise ConfigError(f"search option {key}={value!r}: choose from {', '.join(choices)}")
        return value
    return check


def _bool_or_none(key, value):
    return None if value is None else _bool(key, value)


ALGORITHMS: dict[str, tuple[Callable, dict]] = {
    "optuna-tpe": (optuna_tpe.suggest, {"startup_trials": _int(0), "constant_liar": _bool, "multivariate": _bool,
                                        "group": _bool_or_none, "n_ei_candidates": _int(1), "dedupe": _bool,
                                        "max_trials": _int(10), "fidelity": _one_of("final", "rung"),
                                        "goal": _one_of("min", "max"), "gamma": _float(0.0, 1.0, open_low=True),
                                        "objectives": _int(1)}),
    "nsga2": (optuna_tpe.nsga2_suggest, {"objectives": _int(2), "population_size": _int(2), "dedupe": _bool,
                                         "max_trials": _int(10)}),
    "tpe": (tpe.suggest, {"startup_trials": _int(0), "constant_liar": _bool, "n_ei_candidates": _int(1),
                          "gamma": _float(0.0, 1.0, open_low=True), "prior_weight": _float(0.0, open_low=True)}),
    "rand": (_rand.suggest, {}),
    "anneal": (anneal_suggest, {"avg_best_idx": _float(0.0, open_low=True),
                                "shrink_coef": _float(0.0, open_low=True)}),
    "grid": (grid.suggest, {"grid_points": _int(2)}),
    "gp": (gp.suggest, {"acquisition": _one_of(*gp.ACQUISITIONS), "kappa": _float(0.0), "xi": _float(0.0),
                        "startup_trials": _int(0), "n_candidates": _int(1), "constant_liar": _bool,
                        "max_observations": _int(2)}),
}


DEFAULT = defaults.ALGORITHM


def check_options(name: str, options: dict | None = None) -> dict:
    """The options of algorithm ``name`` that were given, checked and converted; ``ConfigError`` if wrong."""
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown search algorithm {name!r} (choose from {', '.join(ALGORITHMS)})")
    _, spec = ALGORITHMS[name]
    given = {k: v for k, v in (options or {}).items() if v is not None}
    out = {}
    for key, value in given.items():
        if key not in spec:
            known = ", ".join(spec) if spec else "none"
            raise ConfigError(f"search option {key!r} does not apply to algorithm {name!r} (its options: {known})")
        out[key] = spec[key](key, value)
    if name == "gp":
        acquisition = out.get("acquisition", "ei")
        if "kappa" in out and acquisition != "ucb":
            raise ConfigError("search option 'kappa' applies to acquisition 'ucb' only")
        if "xi" in out and acquisition != "ei":
            raise ConfigError("search option 'xi' applies to acquisition 'ei' only")
    return out


def check_space(name: str, options: dict | None, space) -> None:
    """Check that algorithm ``name`` can search ``space`` (a hyperopt space or ``Domain``)."""
    opts = check_options(name, options)
    if name == "grid":
        grid.check(space, opts.get("grid_points"))
    elif name in ("gp", "optuna-tpe", "nsga2"):
        dimensions(space)


def make_suggest(name: str, options: dict | None = None, *, space=None) -> Suggest:
    """The suggest function of algorithm ``name`` with ``options`` bound (``functools.partial``).

    With ``space`` (a hyperopt space), also checks now that the algorithm can
    search it (grid: every continuous dimension has ``grid_points``), so a bad
    study fails before anything is queued.
    """
    opts = check_options(name, options)
    if space is not None:
        check_space(name, opts, space)
    fn, _ = ALGORITHMS[name]
    return functools.partial(fn, **opts) if opts else fn


def from_search(search: dict | None, *, space=None) -> Suggest:
    """``make_suggest`` from one dict that names the algorithm: ``{"algo": "gp", "acquisition": "ucb", ...}``."""
    search = dict(search or {})
    name = search.pop("algo", DEFAULT)
    return make_suggest(name, search, space=space)
