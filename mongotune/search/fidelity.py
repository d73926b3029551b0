"""Multi-fidelity views of a study's trials: what a BOHB-style search fits its model to.

With pruning, most trials stop early and few run to their last epoch, so a
model fitted to final results alone learns from few points, and ranking a
pruned trial against a complete one compares readings taken at different
budgets.  ``at_highest_rung`` rewrites the trial documents as if every
finished trial had stopped at one common step ``s``: the highest step that
at least ``min_trials`` finished trials reached.  A trial that reached ``s``
is a complete result whose loss is its best reading up to ``s``; one that
stopped before ``s`` stays pruned at its last step (the sampler ranks it after
every trial that got to ``s``, by step and then by reading).  So the model
always compares like with like, on as many trials as the highest well-filled
budget offers (BOHB's rule: fit on the largest budget with enough
observations).  Readings are oriented with the study's goal (a metric to
maximise is negated) and taken from each trial's latest run (a requeued
trial's earlier runs are left out).  Failed and pending trials pass through
unchanged; so does everything when no finished trial has a curve.
"""

from __future__ import annotations

import math

from ._trials import is_pending


def _readings(doc: dict, goal: str) -> dict[int, float]:
    """step -> oriented reading of the trial's latest run (its curve points with the last lease)."""
    curve = [p for p in (doc.get("curve") or []) if isinstance(p, dict)]
    if not curve:
        return {}
    latest = curve[-1].get("lease", "")
    out: dict[int, float] = {}
    for p in curve:
        step, value = p.get("step"), p.get("value")
        if p.get("lease", "") != latest or not isinstance(step, (int, float)) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[int(step)] = -float(value) if goal == "max" else float(value)
    return out


def _ok(doc: dict) -> bool:
    return doc.get("state") == 2 and (doc.get("result") or {}).get("status") == "ok"


def highest_rung(curves: list[dict[int, float]], min_trials: int) -> int | None:
    """The highest step at least ``min_trials`` of these curves reached (None if none is that full)."""
    lasts = sorted((max(c) for c in curves if c), reverse=True)
    if len(lasts) < min_trials:
        return None
    return lasts[min_trials - 1]


def at_highest_rung(docs: list[dict], goal: str, min_trials: int) -> list[dict]:
    """The documents as the model should see them (copies where changed; see the module's docstring)."""
    finished = {id(d): _readings(d, goal) for d in docs if not is_pending(d) and _ok(d)}
    rung = highest_rung(list(finished.values()), min_trials)
    if rung is None:
        return docs
    out = []
    for doc in docs:
        readings = finished.get(id(doc))
        if not readings:
            out.append(doc)
            continue
        upto = [v for s, v in readings.items() if s <= rung]
        result = {"status": "ok", "loss": min(upto) if upto else min(readings.values())}
        last = max(readings)
        if last < rung:
            result.update(pruned=True, pruned_at=last)
        out.append({**doc, "result": result})
    return out
