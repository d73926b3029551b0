"""Pruners: stop hopeless trials early, decided by each worker from the study's curves in MongoDB.

One small interface: after a trial reports a step, the worker builds the
study's curves (``StudyCurves``) and asks ``pruner.should_prune(curves, tid,
step)``.  Curves are oriented so that lower is better (a metric to maximise
is negated), so every pruner is written once.  Nothing waits: a decision uses
whatever the other trials have reported so far, so it works with any number
of workers on any number of hosts, with workers joining mid-study, and after
a resume (the curves live in the trial documents).

* ``median``: stop a trial whose best value so far is worse than the median of
  the other trials' best values up to the same step (after ``min_epochs``
  steps, and once ``min_trials`` others have reached that step).
* ``asha``: asynchronous successive halving.  Rungs at ``min_epochs *
  reduction_factor**k``; a trial reaching a rung continues only if its value
  there is among the best ``1/reduction_factor`` of all values recorded at
  that rung so far (it is always compared, never queued behind stragglers).
* ``hyperband``: several successive-halving brackets with staggered first
  rungs (``min_epochs * reduction_factor**b``); a trial's bracket is fixed by
  its tid, and it only competes with trials of its own bracket.
* ``envelope``: stop a trial that is worse, at its current step, than every
  one of the study's ``top`` best complete trials was at the same step (from
  ``min_epochs`` on, once ``min_trials`` trials ran to their end).  Where the
  trials that end best started slowly, their early readings are poor and the
  bar at early steps is low, so slow starters are not thrown away; where they
  led from the first epoch, the bar is high and hopeless trials stop at once.
  The rule compares a trial with what the winners actually did, not with the
  median or the top third of everyone at that step.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from ..errors import ConfigError

PRUNERS = ("none", "median", "asha", "hyperband", "envelope")


@dataclass
class TrialCurve:
    """One trial's readings, oriented so that lower is better."""

    tid: int
    values: dict[int, float] = field(default_factory=dict)  # step -> value
    finished: bool = False
    pruned: bool = False

    def at(self, step: int) -> float | None:
        """The value at ``step``, or at the last step before it that was reported (None if none)."""
        if step in self.values:
            return self.values[step]
        earlier = [s for s in self.values if s <= step]
        return self.values[max(earlier)] if earlier else None

    def best_until(self, step: int) -> float | None:
        vals = [v for s, v in self.values.items() if s <= step]
        return min(vals) if vals else None

    @property
    def last_step(self) -> int:
        return max(self.values) if self.values else 0


@dataclass
class StudyCurves:
    trials: dict[int, TrialCurve] = field(default_factory=dict)

    def others(self, tid: int) -> list[TrialCurve]:
        return [c for t, c in self.trials.items() if t != tid]


class Pruner:
    """Base class: answer "stop trial ``tid`` now, at ``step``?" from the study's curves."""

    name = "none"

    def should_prune(self, curves: StudyCurves, tid: int, step: int) -> bool:
        return self.decision(curves, tid, step)[0]

    def decides_at(self, tid: int, step: int) -> bool:
        """Whether a decision is taken at this step at all (saves reading the curves when not)."""
        return True

    def decision(self, curves: StudyCurves, tid: int, step: int) -> tuple[bool, dict]:
        """``(prune?, why)``: the answer and what it was based on (recorded on a pruned trial)."""
        return False, {"pruner": self.name, "step": step}

    def describe(self) -> str:
        return self.name


class NoPruner(Pruner):
    pass


class _FromMinEpochs(Pruner):
    """A pruner that may decide at every step from ``min_epochs`` on, once ``min_trials`` others allow it."""

    def __init__(self, min_epochs: int = 1, min_trials: int = 1):
        self.min_epochs = min_epochs
        self.min_trials = min_trials

    def decides_at(self, tid: int, step: int) -> bool:
        return step >= self.min_epochs


class MedianPruner(_FromMinEpochs):
    name = "median"

    def __init__(self, min_epochs: int = 1, min_trials: int = 4):
        super().__init__(min_epochs, min_trials)

    def decision(self, curves: StudyCurves, tid: int, step: int) -> tuple[bool, dict]:
        why: dict = {"pruner": self.name, "step": step}
        if step < self.min_epochs or tid not in curves.trials:
            return False, why
        mine = curves.trials[tid].best_until(step)
        others = [c.best_until(step) for c in curves.others(tid) if c.last_step >= step]
        others = [v for v in others if v is not None]
        if mine is None or len(others) < self.min_trials:
            return False, why
        median = statistics.median(others)
        why.update(value=mine, median=median, others=len(others))
        return mine > median, why

    def describe(self) -> str:
        return f"median (from epoch {self.min_epochs}, once {self.min_trials} other trials got there)"


def _keeps(mine: float, competing: list[float], reduction_factor: int) -> bool:
    """Is ``mine`` among the best ``len/reduction_factor`` (at least the best one) of ``competing``?"""
    ranked = sorted(competing)
    k = max(1, len(ranked) // reduction_factor)
    return mine <= ranked[k - 1]


class ASHAPruner(Pruner):
    name = "asha"

    def __init__(self, min_epochs: int = 1, reduction_factor: int = 3, min_trials: int = 1):
        self.min_epochs = min_epochs
        self.reduction_factor = reduction_factor
        self.min_trials = min_trials  # comparisons start once this many trials reached the rung

    def rungs_until(self, step: int, first: int) -> list[int]:
        rungs, r = [], first
        while r <= step:
            rungs.append(r)
            r *= self.reduction_factor
        return rungs

    def first_rung(self, tid: int) -> int:
        return self.min_epochs

    def decides_at(self, tid: int, step: int) -> bool:
        rungs = self.rungs_until(step, self.first_rung(tid))
        return bool(rungs) and rungs[-1] == step

    def peers(self, curves: StudyCurves, tid: int) -> list[TrialCurve]:
        return curves.others(tid)

    def decision(self, curves: StudyCurves, tid: int, step: int) -> tuple[bool, dict]:
        why: dict = {"pruner": self.name, "step": step}
        mine = curves.trials.get(tid)
        if mine is None or not self.decides_at(tid, step):  # decisions are taken at rungs only
            return False, why
        value = mine.at(step)
        if value is None:
            return False, why
        competing = [c.at(step) for c in self.peers(curves, tid) if c.last_step >= step]
        competing = [v for v in competing if v is not None] + [value]
        if len(competing) < self.min_trials + 1:
            return False, why
        kept = max(1, len(competing) // self.reduction_factor)
        why.update(rung=step, value=value, competing=len(competing), kept=kept,
                   rank=1 + sum(1 for v in competing if v < value))
        return not _keeps(value, competing, self.reduction_factor), why

    def describe(self) -> str:
        return f"asha (rungs at epoch {self.min_epochs} x {self.reduction_factor}^k, keeps the best 1/{self.reduction_factor})"


class HyperbandPruner(ASHAPruner):
    name = "hyperband"

    def __init__(self, min_epochs: int = 1, reduction_factor: int = 3, max_epochs: int = 27, min_trials: int = 1):
        super().__init__(min_epochs, reduction_factor, min_trials)
        if max_epochs < min_epochs:
            raise ConfigError(f"hyperband needs max epochs ({max_epochs}) >= --min-epochs ({min_epochs})")
        self.max_epochs = max_epochs
        self.brackets = int(math.floor(math.log(max_epochs / min_epochs, reduction_factor) + 1e-9)) + 1

    def bracket(self, tid: int) -> int:
        return tid % self.brackets

    def first_rung(self, tid: int) -> int:
        return self.min_epochs * self.reduction_factor ** self.bracket(tid)

    def peers(self, curves: StudyCurves, tid: int) -> list[TrialCurve]:
        b = self.bracket(tid)
        return [c for c in curves.others(tid) if self.bracket(c.tid) == b]

    def describe(self) -> str:
        return (f"hyperband ({self.brackets} brackets, first rungs at epoch {self.min_epochs} x "
                f"{self.reduction_factor}^b up to {self.max_epochs})")


class EnvelopePruner(_FromMinEpochs):
    name = "envelope"

    def __init__(self, min_epochs: int = 1, top: int = 3, min_trials: int = 3):
        super().__init__(min_epochs, min_trials)  # min_trials: complete trials needed before any decision
        self.top = top

    def decision(self, curves: StudyCurves, tid: int, step: int) -> tuple[bool, dict]:
        why: dict = {"pruner": self.name, "step": step}
        mine = curves.trials.get(tid)
        value = mine.best_until(step) if mine is not None and step >= self.min_epochs else None
        complete = [c for c in curves.others(tid) if c.finished and not c.pruned and c.values]
        if value is None or len(complete) < self.min_trials:
            return False, why
        leaders = sorted(complete, key=lambda c: min(c.values.values()))[: self.top]
        then = [v for v in (c.best_until(step) for c in leaders) if v is not None]
        if not then:  # the leaders' curves start after this step: nothing to compare with
            return False, why
        bar = max(then)
        why.update(value=value, bar=bar, leaders=[c.tid for c in leaders], complete=len(complete))
        return value > bar, why

    def describe(self) -> str:
        return (f"envelope (from epoch {self.min_epochs}: worse than each of the {self.top} best complete "
                f"trials at the same epoch, once {self.min_trials} trials completed)")


def _int_option(spec: dict, key: str, default: int, low: int, flag: str) -> int:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{flag} must be an integer >= {low}, got {value!r}")
    return value


def validate_pruner(spec: dict | None, max_epochs: int | None = None) -> dict | None:
    """Check a study's pruner settings; return them normalised (None for no pruning)."""
    if not spec or spec.get("kind") in (None, "none"):
        return None
    make_pruner(spec, max_epochs)
    return dict(spec)


def make_pruner(spec: dict | None, max_epochs: int | None = None) -> Pruner:
    """The pruner a study's ``pruner`` setting names, e.g. ``{"kind": "asha", "min_epochs": 1,
    "reduction_factor": 3}``; ConfigError (one line) for anything invalid."""
    if not spec or spec.get("kind") in (None, "none"):
        return NoPruner()
    kind = spec.get("kind")
    if kind not in PRUNERS:
        raise ConfigError(f"unknown pruner {kind!r}; choose from: {', '.join(PRUNERS)}")
    min_epochs = _int_option(spec, "min_epochs", 1, 1, "--min-epochs")
    min_trials = _int_option(spec, "min_trials", {"median": 4, "envelope": 3}.get(kind, 1), 1, "--min-trials")
    if kind == "median":
        return MedianPruner(min_epochs, min_trials)
    if kind == "envelope":
        return EnvelopePruner(min_epochs, _int_option(spec, "top", 3, 1, "--top"), min_trials)
    rf = _int_option(spec, "reduction_factor", 3, 2, "--reduction-factor")
    if kind == "asha":
        return ASHAPruner(min_epochs, rf, min_trials)
    top = spec.get("max_epochs", max_epochs)
    if top is None:
        raise ConfigError("hyperband needs the most epochs (steps) a trial can run: pass --max-epochs")
    return HyperbandPruner(min_epochs, rf, _int_option({"m": top}, "m", 1, 1, "--max-epochs"), min_trials)


def orient(value: float, goal: str) -> float:
    """A metric reading as a pruner compares it: lower is better."""
    return -value if goal == "max" else value
