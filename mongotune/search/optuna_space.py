"""A hyperopt space as Optuna sees it: one Optuna distribution per hyperopt label, and the values both ways.

``dims.dimensions`` reads the labels, their kinds and the choices that gate
them out of the pyll graph; this module maps each to the Optuna distribution
that keeps what a sampler can exploit:

==============================  ==============================================  ============================
hyperopt                        Optuna distribution                             value hyperopt stores
==============================  ==============================================  ============================
``choice`` / ``pchoice``        ``CategoricalDistribution(0 .. n-1)``           the option's index
``randint(low, high)``          ``CategoricalDistribution(low .. high-1)``      the integer
``uniform``                     ``FloatDistribution(low, high)``                the float
``loguniform``                  ``FloatDistribution(e^low, e^high, log=True)``  the float
``quniform`` (bounded, q)       ``IntDistribution(k_lo, k_hi)`` over k          ``k * q``
``qloguniform``                 the same, ``log=True`` when k_lo >= 1           ``k * q``
``normal`` kinds (unbounded)    ``FloatDistribution(0, 1)``: the prior's CDF    the value at that quantile
==============================  ==============================================  ============================

So an ordinal hyper-parameter written ``scope.int(hp.quniform("units", 0, 5,
1))`` is the same ``IntDistribution(0, 5)`` an Optuna user would write, and a
Parzen estimator over it knows the values are ordered and discrete.
``hp.choice`` is a ``randint`` in hyperopt's graph, and hyperopt documents
``randint`` as unordered (no more alike near integers than far ones), so
both are categorical.  ``pchoice``'s probabilities are not given to Optuna (its samplers draw
categorical values uniformly at random before their model takes over).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .dims import Dim


@dataclass(frozen=True)
class Param:
    """One hyper-parameter: its ``Dim`` and its Optuna distribution, with the conversions between them."""

    dim: Dim
    distribution: Any  # an optuna.distributions.BaseDistribution
    kind: str  # "category", "multiple" (k * q), "float", "quantile"

    @property
    def label(self) -> str:
        return self.dim.label

    def to_optuna(self, value) -> Any | None:
        """hyperopt's stored value as this distribution's external value; None if it cannot be one."""
        d = self.distribution
        try:
            if self.kind == "category":
                index = int(value)
                return index if index == value and self.dim.offset <= index < self.dim.offset + len(d.choices) \
                    else None
            if self.kind == "multiple":
                return min(d.high, max(d.low, int(round(float(value) / self.dim.q))))
            if self.kind == "quantile":
                return min(d.high, max(d.low, self.dim.to_unit(value)))
            v = float(value)
            return min(d.high, max(d.low, v)) if math.isfinite(v) else None
        except (TypeError, ValueError, OverflowError):
            return None

    def to_hyperopt(self, value) -> Any:
        """A sampled external value as hyperopt stores it (an index, an integer, ``k * q``, a float)."""
        if self.kind == "category":
            return int(value)
        if self.kind == "multiple":
            return float(int(value)) * self.dim.q
        if self.kind == "quantile":
            return self.dim.from_unit(value)
        return float(value)


def param_of(dim: Dim) -> Param:
    """The Optuna view of one dimension."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if dim.indexed:  # choice, pchoice, randint: unordered
        return Param(dim, CategoricalDistribution(list(range(dim.offset, dim.offset + dim.size))), "category")
    if not dim.bounded:
        return Param(dim, FloatDistribution(0.0, 1.0), "quantile")
    if dim.quantised:
        lo, hi = dim._q_range
        if hi <= lo:  # one multiple of q only: a constant, kept as a one-value range
            hi = lo
        return Param(dim, IntDistribution(lo, hi, log=dim.log and lo >= 1), "multiple")
    if dim.log:
        return Param(dim, FloatDistribution(math.exp(dim.low), math.exp(dim.high), log=True), "float")
    return Param(dim, FloatDistribution(dim.low, dim.high), "float")


class OptunaSpace:
    """Every dimension of a hyperopt space as a ``Param``, parents before the dimensions they gate."""

    def __init__(self, dims: list[Dim]):
        self.params = [param_of(d) for d in dims]
        self.by_label = {p.label: p for p in self.params}
        # a flat space's points compare as tuples of Optuna's internal values in this order (none: conditional)
        self.flat_labels = () if self.conditional else tuple(sorted(self.by_label))

    def internal(self, assignment: dict) -> tuple | None:
        """A point of a flat space as Optuna's internal values (``flat_labels`` order); None if it cannot be one."""
        if not self.flat_labels or len(assignment) != len(self.flat_labels):
            return None
        out = []
        for label in self.flat_labels:
            p = self.by_label[label]
            v = p.to_optuna(assignment.get(label)) if label in assignment else None
            if v is None:
                return None
            out.append(float(p.distribution.to_internal_repr(v)))
        return tuple(out)

    @property
    def conditional(self) -> bool:
        return any(p.dim.conditional for p in self.params)

    @property
    def discrete(self) -> bool:
        """Every dimension takes finitely many values (so a configuration can be tried twice)."""
        return all(p.kind in ("category", "multiple") for p in self.params)

    def trial_params(self, assignment: dict) -> tuple[dict, dict] | None:
        """(params, distributions) of a stored trial for ``optuna.trial.create_trial``; None if a value
        does not fit the space (a trial queued by hand with another space, say)."""
        params, dists = {}, {}
        for label, value in assignment.items():
            p = self.by_label.get(label)
            if p is None:
                continue  # a label this space does not have: not part of what the sampler models
            v = p.to_optuna(value)
            if v is None:
                return None
            params[label], dists[label] = v, p.distribution
        return params, dists

    def sample(self, trial) -> dict:
        """Ask an Optuna trial for every dimension active under the values drawn before it;
        the hyperopt assignment (label -> stored value) of the point."""
        assignment: dict = {}
        for p in self.params:
            if not p.dim.active(assignment):
                continue
            assignment[p.label] = p.to_hyperopt(_suggest(trial, p))
        return assignment


def _suggest(trial, p: Param):
    d = p.distribution
    if p.kind == "category":
        return trial.suggest_categorical(p.label, d.choices)
    if p.kind == "multiple":
        return trial.suggest_int(p.label, d.low, d.high, log=d.log)
    return trial.suggest_float(p.label, d.low, d.high, log=d.log)
