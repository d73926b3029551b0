"""An in-memory Optuna study that follows a hyperopt ``trials`` list, so Optuna's samplers can read it.

Each hyperopt trial document becomes one Optuna trial, matched by ``tid``:

=====================================  ==========================================================
hyperopt document                      Optuna trial
=====================================  ==========================================================
queued or running (no loss yet)        ``RUNNING`` (a sampler's constant liar sees it)
done, ``ok``, finite loss              ``COMPLETE`` with ``value = loss``
done, ``ok``, ``pruned`` at step s     ``PRUNED`` with the intermediate value ``{s: loss}``, so
                                       Optuna's TPE ranks it after every complete trial, by the
                                       step it reached, then by its loss
done, ``fail`` (or a NaN/inf loss)     ``COMPLETE`` but infeasible (one violated constraint), so
                                       TPE ranks it after every feasible trial: a region that
                                       crashes or runs out of memory counts as a bad region
a value outside the space              left out
=====================================  ==========================================================

The mirror is kept between calls and brought up to date incrementally: a
new document is one ``add_trial``, a pending one that finished one state
change; unchanged documents cost a dict lookup.  Anything an incremental
update cannot express (a finished trial that changed or disappeared,
``Trials.delete_all``) rebuilds it from scratch.  A trial asked for but never
inserted (a coordinator that stopped mid-batch) is marked failed, which
samplers ignore.

For very large studies the model holds at most ``max_trials`` finished
trials: past that, it is rebuilt from the best quarter and the most recent
quarter of that many (every pending trial stays), then grows again, so a
suggestion's cost stays bounded and a rebuild comes once per ``max_trials/2``
trials.  The points of all trials, in the model or not, are remembered, so
none is proposed twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._trials import is_pending
from .dims import assignment_of, point_key
from .optuna_space import OptunaSpace

PENDING, COMPLETE, PRUNED, FAILED = "pending", "complete", "pruned", "failed"
FAILED_CONSTRAINT = {"failed": 1.0}
PRUNED_CONSTRAINT = {"pruned": 1.0}  # several objectives: a pruned trial ranks with the infeasible ones


@dataclass(frozen=True)
class Outcome:
    """What the mirror takes from a document: how it ended, its losses (lower is better), the step a pruned
    trial reached, and its constraint values (<= 0: satisfied)."""

    kind: str
    values: tuple | None = None
    step: int | None = None
    constraints: tuple = ()

    @property
    def loss(self) -> float | None:
        return self.values[0] if self.values else None


@dataclass(frozen=True)
class Row:
    """What the mirror holds for one tid: the Optuna trial id and what it was made from."""

    trial_id: int
    outcome: Outcome
    key: tuple

    @property
    def kind(self) -> str:
        return self.outcome.kind


def _tid(doc: dict) -> int:
    tid = doc.get("tid")
    return tid if isinstance(tid, int) else -1


def _finite(values) -> tuple | None:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    return out if all(math.isfinite(v) for v in out) else None


def outcome(doc: dict, objectives: int = 1) -> Outcome:
    """How a hyperopt document ended, as the mirror records it.  With several objectives the result holds
    ``losses`` (one per objective, lower is better; ``loss`` is the first); ``constraints`` (a list, each
    <= 0 when satisfied) may come with any result."""
    if is_pending(doc):
        return Outcome(PENDING)
    result = doc.get("result") or {}
    losses = [result.get("loss")] if objectives == 1 else result.get("losses")
    values = _finite(losses) if isinstance(losses, (list, tuple)) and len(losses) == objectives else None
    if doc.get("state") != 2 or result.get("status") != "ok" or values is None:
        return Outcome(FAILED)
    raw = result.get("constraints")
    constraints = (_finite(raw) or ()) if isinstance(raw, (list, tuple)) else ()
    if result.get("pruned"):
        return Outcome(PRUNED, values, _pruned_step(doc), constraints)
    return Outcome(COMPLETE, values, None, constraints)


def _pruned_step(doc: dict) -> int:
    at = (doc.get("result") or {}).get("pruned_at")
    if isinstance(at, (int, float)) and not isinstance(at, bool) and math.isfinite(at):
        return int(at)
    curve = doc.get("curve") or []
    steps = [p.get("step") for p in curve if isinstance(p, dict) and isinstance(p.get("step"), (int, float))]
    return int(max(steps)) if steps else 0


def _constraints_of(out: Outcome, objectives: int) -> dict:
    """The Optuna constraints of an outcome: the result's own, and one violated for a failure (or, with several
    objectives, for a pruned trial, which Optuna's multi-objective samplers cannot rank by step)."""
    named = {f"c{i}": v for i, v in enumerate(out.constraints)}
    if out.kind == FAILED:
        named.update(FAILED_CONSTRAINT)
    elif out.kind == PRUNED and objectives > 1:
        named.update(PRUNED_CONSTRAINT)
    return named


class StudyMirror:
    """The Optuna study of one hyperopt search (one space, one ``trials`` list)."""

    def __init__(self, space: OptunaSpace, *, max_trials: int | None = None, objectives: int = 1):
        self.space = space
        self.max_trials = max_trials
        self.objectives = objectives
        self.rows: dict[int, Row] = {}
        self.points: dict[int, tuple] = {}  # tid -> point key, for every trial seen
        self.internal: dict[int, tuple | None] = {}  # tid -> the point as Optuna's internal values (flat spaces)
        self.cut: int | None = None  # bounded: trials up to this tid are in the model only if chosen
        self.rebuilds = 0
        self._new_study()

    def _new_study(self) -> None:
        import optuna

        self.study = optuna.create_study(storage=optuna.storages.InMemoryStorage(),
                                         sampler=optuna.samplers.RandomSampler(seed=0),
                                         directions=["minimize"] * self.objectives)
        self.storage = self.study._storage
        self.study_id = self.study._study_id
        self.rows = {}

    # ------------------------------------------------------------ sync
    def sync(self, docs: list[dict]) -> None:
        """Bring the study up to date with ``docs`` (every document of the search)."""
        self._note_points(docs)
        if self.cut is not None:  # a bounded study: the trials chosen last time, and those since
            docs = [d for d in docs if is_pending(d) or d.get("tid") in self.rows or _tid(d) > self.cut]
        if self.max_trials is not None and sum(not is_pending(d) for d in docs) > self.max_trials:
            docs = self._choose(docs)
            self.rows = {}  # forces the rebuild below
        if not self.rows or not self._apply(docs):
            self.rebuilds += bool(self.rows) or self.cut is not None
            self._new_study()
            if not self._apply(docs):  # cannot happen on a fresh study; keep the search going anyway
                raise RuntimeError("optuna mirror: could not rebuild the study from the trials")

    def _apply(self, docs: list[dict]) -> bool:
        """Incremental update; False when only a rebuild can express the change."""
        seen = set()
        for doc in docs:
            tid = doc.get("tid")
            if not isinstance(tid, int) or tid in seen:
                continue
            seen.add(tid)
            out = outcome(doc, self.objectives)
            row = self.rows.get(tid)
            if row is not None and row.kind != PENDING and row.outcome == out:
                continue  # a finished trial as it was: the common case, nothing computed
            assignment = assignment_of(doc)
            key = point_key(assignment)
            if row is None:
                self._add(tid, assignment, key, out)
            elif row.kind != PENDING or row.key != key:
                return False  # a finished trial changed, or a trial's point did
            elif out.kind != PENDING:
                self._finish(tid, row, out)
        for tid in [t for t in self.rows if t not in seen]:
            row = self.rows[tid]
            if row.kind != PENDING:
                return False  # a finished trial left the list
            self._drop(tid, row)
        return True

    def _choose(self, docs: list[dict]) -> list[dict]:
        """A bounded study: every pending trial, the best quarter of ``max_trials`` finished ones and the most
        recent quarter.  It then grows trial by trial up to ``max_trials`` again before the next choice, so the
        cost of a rebuild is spread over ``max_trials / 2`` suggestions."""
        finished = [d for d in docs if not is_pending(d)]

        def loss_of(d):
            out = outcome(d, self.objectives)
            return out.loss if out.kind == COMPLETE else math.inf

        quarter = max(1, self.max_trials // 4)
        keep = {id(d) for d in sorted(finished, key=loss_of)[:quarter]}
        keep |= {id(d) for d in sorted(finished, key=_tid)[-quarter:]}
        self.cut = max((_tid(d) for d in docs), default=-1)
        return [d for d in docs if is_pending(d) or id(d) in keep]

    def _note_points(self, docs: list[dict]) -> None:
        """Remember the point of every trial ever seen (in the model or not): no point is proposed twice."""
        current = set()
        for doc in docs:
            tid = doc.get("tid")
            if not isinstance(tid, int):
                continue
            current.add(tid)
            if tid not in self.points or is_pending(doc):  # a pending trial's point is checked each time
                assignment = assignment_of(doc)
                self.points[tid] = point_key(assignment)
                self.internal[tid] = self.space.internal(assignment)
        if len(current) != len(self.points):
            for tid in [t for t in self.points if t not in current]:
                del self.points[tid]
                self.internal.pop(tid, None)

    # ------------------------------------------------------------ one trial
    def _add(self, tid: int, assignment: dict, key: tuple, out: Outcome) -> None:
        from optuna.trial import TrialState, create_trial

        fitted = self.space.trial_params(assignment)
        if fitted is None:
            return  # a point this space cannot hold: the sampler never sees it
        params, dists = fitted
        kwargs: dict = {"params": params, "distributions": dists, "user_attrs": {"tid": tid},
                        "constraints": _constraints_of(out, self.objectives) or None}
        if out.kind == PENDING:
            kwargs["state"] = TrialState.RUNNING
        elif out.kind == PRUNED and self.objectives == 1:
            kwargs.update(state=TrialState.PRUNED, intermediate_values={out.step: out.loss})
        else:
            kwargs.update(state=TrialState.COMPLETE, values=list(out.values or [0.0] * self.objectives))
        trial_id = self.storage.create_new_trial(self.study_id, template_trial=create_trial(**kwargs))
        self.rows[tid] = Row(trial_id, out, key)

    def _finish(self, tid: int, row: Row, out: Outcome) -> None:
        from optuna.trial import TrialState

        trial_id = row.trial_id
        for name, value in _constraints_of(out, self.objectives).items():  # as Trial.set_constraint stores it
            self.storage.set_trial_system_attr(trial_id, f"constraints:{name}", value)
        if out.kind == PRUNED and self.objectives == 1:
            self.storage.set_trial_intermediate_value(trial_id, out.step, out.loss)
            self.storage.set_trial_state_values(trial_id, TrialState.PRUNED)
        else:
            self.storage.set_trial_state_values(trial_id, TrialState.COMPLETE,
                                               list(out.values or [0.0] * self.objectives))
        self.rows[tid] = Row(trial_id, out, row.key)

    def _drop(self, tid: int, row: Row) -> None:
        from optuna.trial import TrialState

        self.storage.set_trial_state_values(row.trial_id, TrialState.FAIL)
        del self.rows[tid]

    # ------------------------------------------------------------ asking
    def asked(self, tid: int, trial, assignment: dict) -> None:
        """Record a trial the sampler just proposed for ``tid`` (pending until its document says otherwise)."""
        self.storage.set_trial_user_attr(trial._trial_id, "tid", tid)
        key = point_key(assignment)
        self.rows[tid] = Row(trial._trial_id, Outcome(PENDING), key)
        self.points[tid] = key
        self.internal[tid] = self.space.internal(assignment)

    def keys(self) -> set[tuple]:
        """The points of every trial seen (finished, pending or just asked for), in the model or not."""
        return set(self.points.values())

    def internal_keys(self) -> set[tuple]:
        """The same points as tuples of Optuna's internal values, in the order of ``space.flat_labels``."""
        return {v for v in self.internal.values() if v is not None}
