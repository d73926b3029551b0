"""Which trial is a study's best, and what a trial's value of the study's metric is: one rule for every view.

The best trial has the lowest loss (what the search minimises) among the
trials that ran to their end.  A pruned trial, whose loss is the one it had
when it was stopped, is the best only when no trial ran to its end.  In a
study with constraints, a trial that violates one (``feasible``) is the best
only when no trial meets them all.  Ties go to the earlier trial.  ``status``, the first row of ``leaderboard``, the
report, the dashboard, ``final``, the coordinator's record of the study's
best and the models a worker keeps all rank trials with ``rank_key``.

A trial's value of the study's metric is the field of that name in its
result (a Keras trial's ``val_accuracy``, a command study's metric line, what
a pruned trial had reached); the metric ``loss`` is the loss itself.  Failed,
queued and running trials have none.

Pure functions: no database, so the store's queries and the views' rows (the
report's ``TrialRow``) rank with the very same code.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")

_PLAIN_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def finite(v) -> float | None:
    """``v`` as a float when it is a finite number (not a bool), else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def feasible(result: dict | None) -> bool:
    """Does a finished trial meet its study's constraints?  Its ``result.constraints`` holds one value per
    constraint, <= 0 when satisfied; a trial without them (a study without constraints) is feasible."""
    values = (result or {}).get("constraints")
    if not isinstance(values, list):
        return True
    return all((v := finite(c)) is not None and v <= 0 for c in values)


def rank_key(loss: float | None, pruned: bool, tid: int, infeasible: bool = False) -> tuple | None:
    """Where a finished trial ranks (lower is better): feasible trials before infeasible ones, then trials
    that ran to their end before pruned ones, then by loss, then by tid.  None for a trial without a finite
    loss (failed, queued, running)."""
    loss = finite(loss)
    return None if loss is None else (bool(infeasible), bool(pruned), loss, tid)


def ranked(items: Iterable[T], facts: Callable[[T], tuple]) -> list[T]:
    """``items`` that have a finite loss, best first; ``facts(item)`` gives ``(loss, pruned, tid)`` or
    ``(loss, pruned, tid, infeasible)``."""
    keyed = [(key, i, item) for i, item in enumerate(items) if (key := rank_key(*facts(item))) is not None]
    return [item for _, _, item in sorted(keyed, key=lambda k: (k[0], k[1]))]


def pick_best(items: Iterable[T], facts: Callable[[T], tuple]) -> T | None:
    """The best of ``items`` by ``rank_key`` (None when no item has a finite loss)."""
    best = ranked(items, facts)
    return best[0] if best else None


def metric_value(result: dict | None, name: str, loss: float | None) -> float | None:
    """The value of the study's metric ``name`` in a finished trial's ``result`` (``loss``: the loss)."""
    if name == "loss":
        return finite(loss)
    return finite((result or {}).get(name))


def metric_fields(name: str) -> list[str]:
    """The fields of a trial document a reader needs for the value of metric ``name`` (a name that is not a
    plain field name, ``a.b`` or ``$x``, needs the whole result)."""
    if name == "loss":
        return ["result.loss"]
    return [f"result.{name}"] if _PLAIN_FIELD.match(name) else ["result"]
