"""The dimensions of a hyperopt search space, as the search algorithms see them.

hyperopt describes a space as a pyll graph; its own algorithms (TPE, random,
annealing) sample that graph directly.  Grid search and the Gaussian-process
algorithm need more: the list of hyper-parameters, the kind and bounds of
each, which of them are only active under some choice (conditional spaces),
and a way to turn a value into a number in [0, 1] and back.

``dimensions(domain_or_space)`` reads that out of the graph.  A trial's
parameters are handled the way hyperopt stores them: ``misc.vals[label]`` is
``[value]`` for an active hyper-parameter and ``[]`` for an inactive one; a
choice's value is the index of the option, a log-scaled value is in natural
units (``0.001``, not ``log(0.001)``), a quantised value is already rounded.
"""

from __future__ import annotations

import functools
import graphlib
import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
from hyperopt import base, pyll
from scipy.special import ndtr, ndtri

from ..errors import ConfigError

CONTINUOUS = ("uniform", "loguniform", "normal", "lognormal")
QUANTISED = ("quniform", "qloguniform", "qnormal", "qlognormal")
INDEXED = ("randint", "categorical")  # integer values; hp.choice is randint(n) under the hood
LOG = ("loguniform", "qloguniform", "lognormal", "qlognormal")
UNBOUNDED = ("normal", "lognormal", "qnormal", "qlognormal")

_EPS = 1e-9


@dataclass(frozen=True)
class Dim:
    """One hyper-parameter of a space.

    ``low``/``high`` are the distribution's own bounds (log space for log
    kinds, as hyperopt takes them); ``mu``/``sigma`` those of normal kinds.
    ``size``/``offset``: an indexed dimension takes the values
    ``offset .. offset + size - 1``.  ``conditions`` is a tuple of
    alternatives, each a tuple of ``(label, value)`` pairs that must all hold;
    ``((),)`` means always active.
    """

    label: str
    dist: str
    low: float | None = None
    high: float | None = None
    q: float | None = None
    mu: float | None = None
    sigma: float | None = None
    size: int = 0
    offset: int = 0
    conditions: tuple = ((),)

    # ------------------------------------------------------------ kinds
    @property
    def indexed(self) -> bool:
        return self.dist in INDEXED

    @property
    def quantised(self) -> bool:
        return self.dist in QUANTISED

    @property
    def continuous(self) -> bool:
        return self.dist in CONTINUOUS

    @property
    def log(self) -> bool:
        return self.dist in LOG

    @property
    def bounded(self) -> bool:
        return self.dist not in UNBOUNDED

    @property
    def conditional(self) -> bool:
        return () not in self.conditions

    def active(self, assignment: dict) -> bool:
        """Is this dimension active under ``assignment`` (label -> value of the active ones)?"""
        return any(all(label in assignment and assignment[label] == value for label, value in cond)
                   for cond in self.conditions)

    # ------------------------------------------------------------ unit scale
    def to_unit(self, value: float) -> float:
        """A value of this dimension on [0, 1] (bounds map to 0 and 1; normal kinds through their CDF)."""
        if self.indexed:
            return 0.0 if self.size <= 1 else (float(value) - self.offset) / (self.size - 1)
        z = math.log(max(float(value), _EPS)) if self.log else float(value)
        if self.bounded:
            u = (z - self.low) / (self.high - self.low)
        else:
            u = float(ndtr((z - self.mu) / self.sigma))
        return min(1.0, max(0.0, u))

    def to_unit_many(self, values) -> np.ndarray:
        """``to_unit`` of many values at once."""
        v = np.asarray(values, dtype=float)
        if self.indexed:
            return np.zeros_like(v) if self.size <= 1 else (v - self.offset) / (self.size - 1)
        z = np.log(np.maximum(v, _EPS)) if self.log else v
        u = (z - self.low) / (self.high - self.low) if self.bounded else ndtr((z - self.mu) / self.sigma)
        return np.clip(u, 0.0, 1.0)

    def from_unit(self, u: float) -> Any:
        """The value at ``u`` on [0, 1], quantised and typed as hyperopt stores it."""
        u = min(1.0, max(0.0, float(u)))
        if self.indexed:
            return int(self.offset + min(self.size - 1, int(round(u * (self.size - 1)))))
        if self.bounded:
            z = self.low + u * (self.high - self.low)
        else:
            z = self.mu + self.sigma * float(ndtri(min(1 - 1e-6, max(1e-6, u))))
        v = math.exp(z) if self.log else z
        if self.quantised:  # round half to even, as hyperopt's np.round; k * q as in np.round(v / q) * q
            k = round(v / self.q)
            if self.bounded:
                lo, hi = self._q_range
                k = min(hi, max(lo, k))
            v = float(k) * self.q
        return float(v)

    @functools.cached_property
    def _q_range(self) -> tuple[int, int]:
        """Smallest and largest multiple of q (as k in k*q) a bounded quantised dimension takes."""
        lo, hi = (math.exp(self.low), math.exp(self.high)) if self.log else (self.low, self.high)
        return int(np.round(lo / self.q)), int(np.round(hi / self.q))

    # ------------------------------------------------------------ grid
    def needs_grid_points(self) -> bool:
        """Continuous and unbounded quantised dimensions have no finite set of values of their own."""
        return self.continuous or (self.quantised and not self.bounded)

    def grid_values(self, grid_points: int | None = None) -> list:
        """The values a grid takes on this dimension (deterministic order, ascending)."""
        if self.indexed:
            return [self.offset + i for i in range(self.size)]
        if self.quantised and self.bounded:
            lo, hi = self._q_range
            return [float(k) * self.q for k in range(lo, hi + 1)]
        if not grid_points:
            raise ConfigError(
                f"grid search: {self.label!r} is a continuous dimension ({self.dist}); "
                "give grid_points (--grid-points N) to put N values on it")
        n = int(grid_points)
        if self.bounded:  # evenly spaced, both ends included (in log space for log kinds)
            units = [i / (n - 1) for i in range(n)] if n > 1 else [0.5]
        else:  # normal kinds: the midpoints of n equally likely slices of the distribution
            units = [(i + 0.5) / n for i in range(n)]
        values = []
        for u in units:
            v = self.from_unit(u)
            if v not in values:  # quantising can merge neighbours
                values.append(v)
        return values


def _const(node, what: str, label: str):
    """The value of a constant pyll argument (a literal, or a graph with no hyper-parameter in it)."""
    if isinstance(node, pyll.Literal):
        return node.obj
    if any(getattr(n, "name", None) == "hyperopt_param" for n in pyll.dfs(node)):
        raise ConfigError(f"search space: the {what} of {label!r} depends on another hyper-parameter, "
                          "which this search algorithm does not support")
    return pyll.rec_eval(node)


def _dim_of(label: str, dist, conditions: tuple) -> Dim:
    name = dist.name
    arg = dist.arg
    if name in ("uniform", "loguniform", "quniform", "qloguniform"):
        low, high = float(_const(arg["low"], "low", label)), float(_const(arg["high"], "high", label))
        q = float(_const(arg["q"], "q", label)) if name.startswith("q") else None
        if not high > low:
            raise ConfigError(f"search space: {label!r} needs low < high")
        if q is not None and not q > 0:
            raise ConfigError(f"search space: {label!r} needs q > 0")
        return Dim(label, name, low=low, high=high, q=q, conditions=conditions)
    if name in ("normal", "lognormal", "qnormal", "qlognormal"):
        mu, sigma = float(_const(arg["mu"], "mu", label)), float(_const(arg["sigma"], "sigma", label))
        q = float(_const(arg["q"], "q", label)) if name.startswith("q") else None
        if not sigma > 0:
            raise ConfigError(f"search space: {label!r} needs sigma > 0")
        return Dim(label, name, mu=mu, sigma=sigma, q=q, conditions=conditions)
    if name == "randint":
        low = int(_const(arg["low"], "low", label))
        high = arg["high"]
        if high is pyll.base.MissingArgument:
            size, offset = low, 0
        else:
            high = int(_const(high, "high", label))
            size, offset = high - low, low
        if size < 1:
            raise ConfigError(f"search space: {label!r} has no values")
        return Dim(label, name, size=size, offset=offset, conditions=conditions)
    if name == "categorical":
        p = np.asarray(_const(arg["p"], "p", label), dtype=float)
        return Dim(label, name, size=int(p.size), offset=0, conditions=conditions)
    raise ConfigError(f"search space: {label!r} has a distribution ({name}) this search algorithm cannot handle")


def _walk(expr) -> tuple[dict, dict]:
    """Labels in graph order with their distribution nodes, and the conditions under which each is used."""
    dists: dict = {}
    conds: dict = {}
    seen: set = set()

    def visit(node, cond: tuple):
        key = (id(node), cond)
        if key in seen:
            return
        seen.add(key)
        if node.name == "hyperopt_param":
            label = node.pos_args[0].obj
            dists.setdefault(label, node.pos_args[1])
            conds.setdefault(label, set()).add(cond)
            visit(node.pos_args[1], cond)
            return
        if node.name == "switch":
            index, options = node.pos_args[0], node.pos_args[1:]
            visit(index, cond)
            label = index.pos_args[0].obj if index.name == "hyperopt_param" else None
            for i, option in enumerate(options):
                visit(option, cond + ((label, i),) if label is not None else cond)
            return
        for child in node.inputs():
            visit(child, cond)

    visit(pyll.as_apply(expr), ())
    return dists, conds


def _simplify(alternatives: set) -> tuple:
    """Drop alternatives implied by a shorter one; ``((),)`` if one is unconditional."""
    if () in alternatives:
        return ((),)
    kept = []
    for cond in sorted(alternatives, key=lambda c: (len(c), repr(c))):
        if not any(set(k) <= set(cond) for k in kept):
            kept.append(cond)
    return tuple(kept)


def dimensions(space_or_domain) -> list[Dim]:
    """The dimensions of a hyperopt space (or ``base.Domain``), parents before the dimensions they gate.

    Raises ``ConfigError`` for a dimension whose bounds depend on another
    hyper-parameter or whose distribution is not one of hyperopt's ``hp.*``.
    """
    expr = space_or_domain.expr if isinstance(space_or_domain, base.Domain) else space_or_domain
    cache_owner = space_or_domain if isinstance(space_or_domain, base.Domain) else None
    cached = getattr(cache_owner, "_mongotune_dims", None)
    if cached is not None:
        return cached
    dists, conds = _walk(expr)
    dims = {label: _dim_of(label, dists[label], _simplify(conds[label])) for label in dists}
    order = list(dists)
    graph = graphlib.TopologicalSorter()
    for label in order:
        parents = {p for cond in dims[label].conditions for p, _ in cond}
        graph.add(label, *sorted(parents, key=order.index))
    try:
        graph.prepare()
    except graphlib.CycleError:  # cannot happen for a tree of choices; keep graph order
        result = [dims[label] for label in order]
    else:
        result = []
        while graph.is_active():
            ready = sorted(graph.get_ready(), key=order.index)
            result.extend(dims[label] for label in ready if label in dims)
            graph.done(*ready)
    if cache_owner is not None:
        cache_owner._mongotune_dims = result
    return result


# ------------------------------------------------------------------ trial documents
def assignment_of(doc: dict) -> dict:
    """label -> value of the active hyper-parameters of a trial document."""
    vals = (doc.get("misc") or {}).get("vals") or {}
    return {label: v[0] for label, v in vals.items() if v}


def _canon(v):
    if isinstance(v, (int, np.integer)):  # bools too
        return int(v)
    return float(v)  # values are compared exactly: hyperopt and this package quantise with the same arithmetic


def point_key(assignment: dict) -> tuple:
    """A hashable identity of a point: two trials with the same key propose the same configuration."""
    return tuple(sorted((label, _canon(v)) for label, v in assignment.items()))


def misc_for(tid: int, domain, assignment: dict) -> dict:
    """hyperopt's ``misc`` (tid, cmd, workdir, idxs, vals) of a new trial at ``assignment``."""
    idxs, vals = {}, {}
    for label in domain.params:
        if label in assignment:
            idxs[label], vals[label] = [tid], [assignment[label]]
        else:
            idxs[label], vals[label] = [], []
    return {"tid": tid, "cmd": domain.cmd, "workdir": domain.workdir, "idxs": idxs, "vals": vals}


def new_docs(trials, domain, tid: int, assignment: dict) -> list:
    """One new (queued) trial document for ``assignment``, made by ``trials`` as hyperopt's algorithms do."""
    return trials.new_trial_docs([tid], [None], [domain.new_result()], [misc_for(tid, domain, assignment)])


def prior_samples(domain, n: int, rng: np.random.Generator) -> list[dict]:
    """``n`` points drawn from the space's own prior (hyperopt's random search, vectorised)."""
    if n <= 0:
        return []
    ids = list(range(n))
    idxs, vals = pyll.rec_eval(domain.s_idxs_vals, memo={domain.s_new_ids: ids, domain.s_rng: rng})
    points: list[dict] = [{} for _ in ids]
    for label in idxs:
        for i, v in zip(idxs[label], vals[label]):
            points[i][label] = _plain(v)
    return points


def _plain(v):
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def complete(dims: Iterable[Dim], assignment: dict, fill: dict) -> dict:
    """``assignment`` with its active/inactive dimensions made consistent, missing ones taken from ``fill``.

    Used after changing a choice: the dimensions it activates get a value
    from ``fill`` (another point of the space), those it deactivates are dropped.
    """
    out: dict = {}
    for d in dims:
        if not d.active(out):
            continue
        if d.label in assignment:
            out[d.label] = assignment[d.label]
        elif d.label in fill:
            out[d.label] = fill[d.label]
        else:
            out[d.label] = d.from_unit(0.5)
    return out
