"""Grid search as a hyperopt ``suggest`` function.

The grid is every combination of the values of the space's dimensions:

* a choice (``hp.choice``/``hp.pchoice``) or ``hp.randint``: every option;
* a quantised bounded dimension (``quniform``, ``qloguniform``, integer
  ranges): every multiple of ``q`` it can take;
* a continuous dimension (``uniform``, ``loguniform``, ``normal``, ...) and an
  unbounded quantised one: ``grid_points`` values, evenly spaced with both ends
  included (in log space for log kinds; for normal kinds the middles of
  ``grid_points`` equally likely slices).  Without ``grid_points`` such a space
  is refused with a ``ConfigError``.

Conditional spaces are walked as a tree: each option of a choice enumerates
only the dimensions active under it, so a branch without hyper-parameters is
one point, not one per value of the other branches' dimensions.

The order is fixed (the first choice in the space varies slowest), so two runs
propose the same sequence.  A point already present in ``trials`` (queued,
running or finished, whoever proposed it) is never proposed again: with any
number of workers every grid point runs once.  When every point is present,
``suggest`` returns ``[]`` and hyperopt's ``FMinIter.run`` stops queuing
(``stopped = True`` on an empty suggestion in hyperopt 0.3.0), whatever
``max_evals`` says.  A trial that ended in hyperopt's ``error`` state is not
part of hyperopt's view of the trials, so its point may be proposed again.
"""

from __future__ import annotations

import itertools
import math
from typing import Iterator

from ..errors import ConfigError
from .dims import Dim, assignment_of, dimensions, new_docs, point_key

_MATERIALISE_MAX = 200_000  # grids up to this size are listed once per domain and cached


def _structure(dims: list[Dim]) -> tuple[list[Dim], list[Dim]]:
    """Dimensions that gate others (walked as a tree) and the rest (crossed per branch)."""
    gates = {label for d in dims for cond in d.conditions for label, _ in cond}
    return [d for d in dims if d.label in gates], [d for d in dims if d.label not in gates]


def _branches(gating: list[Dim], grid_points, i: int = 0, assignment: dict | None = None) -> Iterator[dict]:
    assignment = {} if assignment is None else assignment
    if i == len(gating):
        yield dict(assignment)
        return
    d = gating[i]
    if not d.active(assignment):
        yield from _branches(gating, grid_points, i + 1, assignment)
        return
    for v in d.grid_values(grid_points):
        assignment[d.label] = v
        yield from _branches(gating, grid_points, i + 1, assignment)
    del assignment[d.label]


def check(space_or_domain, grid_points: int | None = None) -> list[Dim]:
    """The dimensions, after checking every one of them has a finite set of grid values."""
    dims = dimensions(space_or_domain)
    for d in dims:
        if d.needs_grid_points() and not grid_points:
            d.grid_values(grid_points)  # raises the ConfigError that names the dimension
    return dims


def points(space_or_domain, grid_points: int | None = None) -> Iterator[dict]:
    """Every grid point (label -> value of its active dimensions), in the grid's fixed order."""
    dims = check(space_or_domain, grid_points)
    gating, crossed = _structure(dims)
    for branch in _branches(gating, grid_points):
        active = [d for d in crossed if d.active(branch)]
        values = [d.grid_values(grid_points) for d in active]
        for combo in itertools.product(*values):
            point = dict(branch)
            point.update(zip((d.label for d in active), combo))
            yield point


def grid_size(space, grid_points: int | None = None) -> int:
    """How many points the grid of ``space`` has (raises ``ConfigError`` if it is not finite)."""
    dims = check(space, grid_points)
    gating, crossed = _structure(dims)
    total = 0
    for branch in _branches(gating, grid_points):
        total += math.prod(len(d.grid_values(grid_points)) for d in crossed if d.active(branch))
    return total


def _cached_points(domain, grid_points):
    cache = getattr(domain, "_mongotune_grid", None)
    if cache is None:
        cache = {}
        try:
            domain._mongotune_grid = cache
        except AttributeError:  # pragma: no cover - a domain that refuses attributes: no cache
            pass
    if grid_points not in cache:
        n = grid_size(domain, grid_points)
        cache[grid_points] = None if n > _MATERIALISE_MAX else [(point_key(p), p) for p in points(domain, grid_points)]
    listed = cache[grid_points]
    if listed is not None:
        return iter(listed)
    return ((point_key(p), p) for p in points(domain, grid_points))


def suggest(new_ids, domain, trials, seed, *, grid_points: int | None = None):
    """hyperopt-compatible suggest: the next grid points not yet in ``trials``; ``[]`` once the grid is done.

    ``seed`` is not used: the grid's order is fixed.
    """
    new_ids = list(new_ids)
    if grid_points is not None and (isinstance(grid_points, bool) or int(grid_points) < 2):
        raise ConfigError(f"grid search: grid_points must be an integer >= 2, not {grid_points!r}")
    taken = {point_key(assignment_of(doc)) for doc in trials.trials}
    docs: list = []
    if not new_ids:
        return docs
    for key, point in _cached_points(domain, grid_points):
        if key in taken:
            continue
        taken.add(key)
        docs.extend(new_docs(trials, domain, new_ids[len(docs)], point))
        if len(docs) == len(new_ids):
            break
    return docs
