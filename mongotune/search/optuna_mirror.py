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


@dataclass(frozen=True)
class Row:
    """What the mirror holds for one tid: the Optuna trial id and what it was made from."""

    trial_id: int
    kind: str
    loss: float | None
    step: int | None
    key: tuple


def _tid(doc: dict) -> int:
    tid = doc.get("tid")
    return tid if isinstance(tid, int) else -1


def outcome(doc: dict) -> tuple[str, float | None, int | None]:
    """(kind, loss, step) of a hyperopt document, as the mirror records it."""
    if is_pending(doc):
        return PENDING, None, None
    result = doc.get("result") or {}
    loss = result.get("loss")
    try:
        loss = float(loss)
    except (TypeError, ValueError):
        loss = math.nan
    if doc.get("state") != 2 or result.get("status") != "ok" or not math.isfinite(loss):
        return FAILED, None, None
    if result.get("pruned"):
        return PRUNED, loss, _pruned_step(doc)
    return COMPLETE, loss, None


def _pruned_step(doc: dict) -> int:
    at = (doc.get("result") or {}).get("pruned_at")
    if isinstance(at, (int, float)) and not isinstance(at, bool) and math.isfinite(at):
        return int(at)
    curve = doc.get("curve") or []
    steps = [p.get("step") for p in curve if isinstance(p, dict) and isinstance(p.get("step"), (int, float))]
    return int(max(steps)) if steps else 0


class StudyMirror:
    """The Optuna study of one hyperopt search (one space, one ``trials`` list)."""

    def __init__(self, space: OptunaSpace, *, max_trials: int | None = None):
        self.space = space
        self.max_trials = max_trials
        self.rows: dict[int, Row] = {}
        self.points: dict[int, tuple] = {}  # tid -> point key, for every trial seen
        self.internal: dict[int, tuple | None] = {}  # tid -> the point as Optuna's internal values (flat spaces)
        self.cut: int | None = None  # bounded: trials up to this tid are in the model only if chosen
        self.rebuilds = 0
        self._new_study()

    def _new_study(self) -> None:
        import optuna

        self.study = optuna.create_study(storage=optuna.storages.InMemoryStorage(),
                                         sampler=optuna.samplers.RandomSampler(seed=0))
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
            kind, loss, step = outcome(doc)
            row = self.rows.get(tid)
            if row is not None and row.kind != PENDING and (row.kind, row.loss, row.step) == (kind, loss, step):
                continue  # a finished trial as it was: the common case, nothing computed
            assignment = assignment_of(doc)
            key = point_key(assignment)
            if row is None:
                self._add(tid, assignment, key, kind, loss, step)
            elif row.kind != PENDING or row.key != key:
                return False  # a finished trial changed, or a trial's point did
            elif kind != PENDING:
                self._finish(tid, row, kind, loss, step)
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
            kind, loss, _ = outcome(d)
            return loss if kind == COMPLETE else math.inf

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
    def _add(self, tid: int, assignment: dict, key: tuple, kind: str, loss, step) -> None:
        from optuna.trial import TrialState, create_trial

        fitted = self.space.trial_params(assignment)
        if fitted is None:
            return  # a point this space cannot hold: the sampler never sees it
        params, dists = fitted
        kwargs: dict = {"params": params, "distributions": dists, "user_attrs": {"tid": tid}}
        if kind == PENDING:
            kwargs["state"] = TrialState.RUNNING
        elif kind == COMPLETE:
            kwargs.update(state=TrialState.COMPLETE, value=loss)
        elif kind == PRUNED:
            kwargs.update(state=TrialState.PRUNED, intermediate_values={step: loss})
        else:
            kwargs.update(state=TrialState.COMPLETE, value=0.0, constraints=FAILED_CONSTRAINT)
        trial_id = self.storage.create_new_trial(self.study_id, template_trial=create_trial(**kwargs))
        self.rows[tid] = Row(trial_id, kind, loss, step, key)

    def _finish(self, tid: int, row: Row, kind: str, loss, step) -> None:
        from optuna.trial import TrialState

        trial_id = row.trial_id
        if kind == PENDING:  # still pending (a requeued trial): nothing to change
            return
        if kind == COMPLETE:
            self.storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [loss])
        elif kind == PRUNED:
            self.storage.set_trial_intermediate_value(trial_id, step, loss)
            self.storage.set_trial_state_values(trial_id, TrialState.PRUNED)
        else:
            for name, violation in FAILED_CONSTRAINT.items():  # as Trial.set_constraint stores it
                self.storage.set_trial_system_attr(trial_id, f"constraints:{name}", violation)
            self.storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.0])
        self.rows[tid] = Row(trial_id, kind, loss, step, row.key)

    def _drop(self, tid: int, row: Row) -> None:
        from optuna.trial import TrialState

        self.storage.set_trial_state_values(row.trial_id, TrialState.FAIL)
        del self.rows[tid]

    # ------------------------------------------------------------ asking
    def asked(self, tid: int, trial, assignment: dict) -> None:
        """Record a trial the sampler just proposed for ``tid`` (pending until its document says otherwise)."""
        self.storage.set_trial_user_attr(trial._trial_id, "tid", tid)
        key = point_key(assignment)
        self.rows[tid] = Row(trial._trial_id, PENDING, None, None, key)
        self.points[tid] = key
        self.internal[tid] = self.space.internal(assignment)

    def keys(self) -> set[tuple]:
        """The points of every trial seen (finished, pending or just asked for), in the model or not."""
        return set(self.points.values())

    def internal_keys(self) -> set[tuple]:
        """The same points as tuples of Optuna's internal values, in the order of ``space.flat_labels``."""
        return {v for v in self.internal.values() if v is not None}
