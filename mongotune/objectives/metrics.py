"""A study's objectives and constraints: their grammar at launch, and a trial's values of them.

At launch (standard library only, so bad input is answered before anything heavy loads):

* ``--metric NAME[:max|:min]``, repeatable: the objectives, in order; the first is the one a trial's
  curve records and a pruner judges.  A name without a direction takes the one the kind knows for it
  (a Keras study's ``params`` is minimised) or ``--goal``.
* ``--constraint 'NAME<=BOUND'`` or ``'NAME>=BOUND'``, repeatable, on any metric the study reports.
* Only ``optuna-tpe`` and ``nsga2`` search several objectives or take constraints into account.

For a trial (``score``, which every kind's ``run`` goes through): a study of several objectives gets
``result.losses``, each metric oriented by its goal so lower is better, and ``result.loss`` is the first
of them (what stock hyperopt tools read); a study with constraints gets ``result.constraints``, one value
per constraint (``value - bound`` for ``<=``, ``bound - value`` for ``>=``: <= 0 when satisfied).  A study
of one metric and no constraint keeps its results exactly as before.
"""

from __future__ import annotations

import math
import re

from ..errors import ConfigError, TrialFailure

GOALS = ("max", "min")
MULTI_OBJECTIVE_ALGORITHMS = ("optuna-tpe", "nsga2")
_CONSTRAINT = re.compile(r"^\s*([^\s<>=]+)\s*(<=|>=)\s*(\S+)\s*$")


def parse_metric(spec: str, default_goal: str, known: dict[str, str] | None = None, what: str = "study") -> dict:
    """``{"name", "goal"}`` of one ``--metric`` (``known``: the metrics the kind reports, with their goals;
    None: any name)."""
    name, goal = spec, None
    if ":" in spec:
        name, _, goal = spec.rpartition(":")
        if goal not in GOALS:
            raise ConfigError(f"--metric {spec}: unknown direction {goal!r}; write NAME:max or NAME:min")
    if not name or any(c.isspace() for c in name):
        raise ConfigError(f"--metric {spec!r}: give a metric name (e.g. val_accuracy:max)")
    if known is not None and name not in known:
        raise ConfigError(f"--metric {spec}: a {what} reports {', '.join(known)}, not {name!r}")
    return {"name": name, "goal": goal or (known or {}).get(name) or default_goal}


def parse_metrics(specs: list[str], default_goal: str, known: dict[str, str] | None = None,
                  what: str = "study") -> list[dict]:
    """Every ``--metric``, in order; a name given twice is an error."""
    metrics = [parse_metric(s, default_goal, known, what) for s in specs]
    names = [m["name"] for m in metrics]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"--metric {twice[0]} is given twice: each objective once")
    return metrics


def parse_constraint(spec: str, known: dict[str, str] | None = None, what: str = "study") -> dict:
    """``{"metric", "op", "bound"}`` of one ``--constraint 'NAME<=BOUND'``."""
    found = _CONSTRAINT.match(spec or "")
    if not found:
        raise ConfigError(f"--constraint {spec!r}: write NAME<=BOUND or NAME>=BOUND (e.g. 'params<=2e6')")
    name, op, raw = found.groups()
    try:
        bound = float(raw)
    except ValueError:
        raise ConfigError(f"--constraint {spec}: {raw!r} is not a number") from None
    if not math.isfinite(bound):
        raise ConfigError(f"--constraint {spec}: the bound must be a finite number")
    if known is not None and name not in known:
        raise ConfigError(f"--constraint {spec}: a {what} never reports {name!r} (it reports {', '.join(known)})")
    return {"metric": name, "op": op, "bound": bound}


def check_algorithm(algo: str, objectives: int, constraints: int) -> None:
    """Only the Optuna-backed searches take several objectives or constraints; NSGA-II needs several."""
    if objectives > 1 and algo not in MULTI_OBJECTIVE_ALGORITHMS:
        raise ConfigError(f"--algo {algo} searches one objective; for {objectives} --metric use "
                          f"{' or '.join(MULTI_OBJECTIVE_ALGORITHMS)}")
    if algo == "nsga2" and objectives < 2:
        raise ConfigError("--algo nsga2 searches several objectives: give --metric twice or more "
                          "(e.g. --metric val_accuracy:max --metric params:min)")
    if constraints and algo not in MULTI_OBJECTIVE_ALGORITHMS:
        raise ConfigError(f"--constraint needs a search that takes constraints into account: --algo "
                          f"{' or '.join(MULTI_OBJECTIVE_ALGORITHMS)}, not {algo}")


# ---------------------------------------------------------------- a trial's values
def objectives_of(study) -> tuple[list[dict], list[dict]]:
    """A study's objectives and constraints (``Study.objectives``; any object with a ``metric`` has one)."""
    objectives = getattr(study, "objectives", None)
    if not objectives:
        objectives = [dict(getattr(study, "metric", None) or {"name": "loss", "goal": "min"})]
    return list(objectives), list(getattr(study, "constraints", None) or [])


def reported_metrics(study) -> list[str]:
    """Every metric a study's trials must report: its objectives', then its constraints', once each."""
    from ..store.pareto import metric_names

    return metric_names(*objectives_of(study))


def score(study, result, *, pruned: bool = False):
    """``result`` with its ``losses`` (several objectives) and ``constraints`` (a study with constraints).

    A metric the trial did not report fails it (``no-metric``); a pruned trial's result gets what its
    values allow (its ``loss`` the first objective's when it reported that one)."""
    from ..store.pareto import constraint_value, metric_names, orient, values_of

    objectives, constraints = objectives_of(study)
    if (len(objectives) == 1 and not constraints) or not isinstance(result, dict) or result.get("status",
                                                                                               "ok") != "ok":
        return result
    values = values_of(result, metric_names(objectives, constraints))
    missing = [n for n, v in values.items() if v is None]
    if missing and not pruned:
        raise TrialFailure("no-metric", f"the trial reported no finite {missing[0]}, which the study's "
                                        f"objectives or constraints need")
    out = dict(result)
    first = objectives[0]
    if len(objectives) > 1 and values[first["name"]] is not None:
        out["loss"] = orient(values[first["name"]], first["goal"])
        if not missing:
            out["losses"] = [orient(values[o["name"]], o["goal"]) for o in objectives]
    if constraints and not missing:
        out["constraints"] = [constraint_value(c, values[c["metric"]]) for c in constraints]
    return out
