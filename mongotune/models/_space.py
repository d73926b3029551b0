"""Inspecting hyperopt spaces: the labelled dimensions and their extreme corners.

:func:`corners` turns any hyperopt space into a short list of concrete
parameter dicts (as ``hyperopt.space_eval`` returns them) such that

* the first corner puts every numeric dimension at its smallest value and
  every choice on its first option, the second puts every numeric dimension
  at its largest value and every choice on its last option;
* further corners are added greedily until every option of every choice and
  both extremes of every numeric dimension have appeared at least once *while
  active* (nested dimensions only count when their branch is selected).

Tests build each corner, which catches shape errors at the edges of a space
long before a tuning run wastes hours finding them.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

from hyperopt import space_eval
from hyperopt.pyll import as_apply
from hyperopt.pyll.base import Literal, MissingArgument, dfs
from hyperopt.pyll_utils import expr_to_config

_MAX_COMBOS = 4096


def _literal(node, name, default=None):
    arg = node.arg.get(name, MissingArgument)
    if arg is MissingArgument:
        return default
    if isinstance(arg, Literal):
        return arg.obj
    raise ValueError(f"argument {name!r} of {node.name} is not a constant")


def _q(value: float, q: float) -> float:
    return float(round(value / q) * q)


def dimensions(space) -> dict[str, dict[str, Any]]:
    """``label -> {'kind', 'candidates', 'conditions'}`` for every hyper-parameter.

    ``candidates`` holds the assignment values hyperopt would record: option
    indices for choices, the two extreme values for numeric dimensions.
    """
    expr = as_apply(space)
    hps: dict = {}
    expr_to_config(expr, None, hps)
    # labels that index a switch (hp.choice / hp.pchoice) hold option indices;
    # a bare hp.randint is an ordinary integer dimension
    switch_labels = {
        node.inputs()[0].arg["label"].obj
        for node in dfs(expr)
        if node.name == "switch" and node.inputs()[0].name == "hyperopt_param"
    }
    dims = {}
    for label, info in hps.items():
        node = info["node"]
        kind = node.name
        if kind == "randint":
            low = _literal(node, "low")
            high = _literal(node, "high")
            if high is None:
                low, high = 0, low
            if label in switch_labels:
                kind = "choice"
                cands = list(range(low, high))
            else:
                cands = [low, high - 1]
        elif kind == "categorical":
            kind = "choice"
            cands = list(range(len(_literal(node, "p"))))
        elif kind == "uniform":
            cands = [float(_literal(node, "low")), float(_literal(node, "high"))]
        elif kind == "quniform":
            q = _literal(node, "q")
            cands = [_q(_literal(node, "low"), q), _q(_literal(node, "high"), q)]
        elif kind == "loguniform":
            cands = [math.exp(_literal(node, "low")), math.exp(_literal(node, "high"))]
        elif kind == "qloguniform":
            q = _literal(node, "q")
            cands = [_q(math.exp(_literal(node, "low")), q), _q(math.exp(_literal(node, "high")), q)]
        elif kind in ("normal", "qnormal", "lognormal", "qlognormal"):
            mu, sigma = _literal(node, "mu"), _literal(node, "sigma")
            lo, hi = mu - 2 * sigma, mu + 2 * sigma
            if kind.endswith("lognormal"):
                lo, hi = math.exp(lo), math.exp(hi)
            if kind.startswith("q"):
                q = _literal(node, "q")
                lo, hi = _q(lo, q), _q(hi, q)
            cands = [lo, hi]
        else:  # pragma: no cover - hyperopt has no other kinds today
            raise ValueError(f"cannot find the extremes of {kind!r} (label {label!r})")
        # keep the order but drop duplicates (e.g. a quantised range of width 0)
        seen: list = []
        for c in cands:
            if c not in seen:
                seen.append(c)
        dims[label] = {"kind": kind, "candidates": seen, "conditions": info["conditions"]}
    return dims


def _active(conditions, assignment) -> bool:
    for conj in conditions:
        if all(c is True or assignment.get(c.name) == c.val for c in conj):
            return True
    return False


def corners(space) -> list[dict]:
    """Concrete parameter dicts covering the extremes of ``space`` (see module doc)."""
    dims = dimensions(space)
    if not dims:
        return [space_eval(space, {})]
    labels = sorted(dims)
    choice_labels = [lab for lab in labels if dims[lab]["kind"] == "choice"]
    numeric_labels = [lab for lab in labels if lab not in choice_labels]

    def assignment(choice_idx: tuple, extreme: int) -> dict:
        a = {}
        for lab, i in zip(choice_labels, choice_idx):
            a[lab] = dims[lab]["candidates"][i]
        for lab in numeric_labels:
            cands = dims[lab]["candidates"]
            a[lab] = cands[min(extreme, len(cands) - 1)]
        return a

    def covered(choice_idx: tuple, extreme: int) -> set:
        a = assignment(choice_idx, extreme)
        out = set()
        for lab in labels:
            if _active(dims[lab]["conditions"], a):
                cands = dims[lab]["candidates"]
                if lab in choice_labels:
                    out.add((lab, cands.index(a[lab])))
                else:
                    out.add((lab, min(extreme, len(cands) - 1)))
        return out

    ranges = [range(len(dims[lab]["candidates"])) for lab in choice_labels]
    total = math.prod(len(r) for r in ranges)
    if total <= _MAX_COMBOS:
        combos = list(itertools.product(*ranges))
    else:  # too many to enumerate: a fixed pseudo-random subset
        rng = random.Random(0)
        combos = [tuple(rng.randrange(len(r)) for r in ranges) for _ in range(_MAX_COMBOS)]
    candidates = [(c, e) for c in combos for e in (0, 1)]
    coverage = {cand: covered(*cand) for cand in candidates}
    reachable = set().union(*coverage.values())

    first = (tuple(0 for _ in choice_labels), 0)
    last = (tuple(len(r) - 1 for r in ranges), 1)
    picked = [first, last]
    done = coverage.get(first, covered(*first)) | coverage.get(last, covered(*last))
    while not reachable <= done:
        best = max(candidates, key=lambda cand: len(coverage[cand] - done))
        gain = coverage[best] - done
        if not gain:
            break
        picked.append(best)
        done |= gain

    out: list[dict] = []
    for cand in picked:
        params = space_eval(space, assignment(*cand))
        if params not in out:
            out.append(params)
    return out
