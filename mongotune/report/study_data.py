"""What the report and the dashboard draw: a study and its trials, as plain dataclasses.

``StudyInfo`` and ``TrialRow`` are the only input of the chart builders
(``charts.py``); nothing there reads MongoDB.  The loaders below read through
the modules that own the documents: a study through ``Study.from_doc``
(``store/studies.py``, which also upgrades studies written before the generic
core) and its trials through ``TrialStore`` (``store/trialdoc.py``:
``TrialRecord``, its ``outcome`` and the curve of its latest run).

``TrialLoader`` is the dashboard's incremental reader: after a first full read
it asks only for trials whose ``refresh_time`` moved (every write to a trial
after its insert sets it) and for queued ones (a new trial has none), each by
that one field, so an update reads the trials that changed, not the whole study.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from ..store.best import metric_fields
from ..store.studies import Study, StudyStore
from ..store.trialdoc import TrialRecord, TrialStore, server_now  # noqa: F401  (server_now: re-exported)

STATES = ("queued", "running", "ok", "failed", "pruned")
TERMINAL = ("ok", "failed", "pruned")

#: fields of a trial document the rows need (never the pickled spec, misc or per-class reports)
TRIAL_FIELDS = ["tid", "exp_key", "state", "params", "result.status", "result.loss", "result.failure.kind",
                "result.failure.reason", "result.pruned", "result.pruned_at", "result.history",
                "result.epoch_seconds", "result.val_accuracy", "result.val_loss", "result.metric",
                "result.epochs", "result.best_epoch", "result.x", "curve", "worker", "book_time",
                "refresh_time", "finished", "attempts", "progress", "version", "duration_s", "misc.vals"]


def trial_fields(metric: str, others: Iterable[str] = ()) -> list[str]:
    """``TRIAL_FIELDS`` and what the value of the study's metric needs (a command study's own metric; the
    whole result for a name that is not a plain field name); ``others``: the study's other objectives' and
    its constraints' metrics (their values, ``result.losses`` and ``result.constraints`` too)."""
    extra = [f for name in (metric, *others) for f in metric_fields(name)]
    if others:
        extra += ["result.losses", "result.constraints"]
    fields = [f for f in TRIAL_FIELDS if "result" not in extra or not f.startswith("result.")]
    return list(dict.fromkeys([*fields, *extra]))

@dataclass
class StudyInfo:
    name: str
    objective: str = "keras"  # keras | command | synthetic | hyperopt (stock fmin jobs) | ...
    metric: str = "loss"  # the study metric's name, e.g. val_accuracy
    goal: str = "min"  # min | max
    max_evals: int | None = None
    status: str | None = None
    created: datetime.datetime | None = None
    space: dict | None = None  # the study's JSON space, when it has one
    final: dict | None = None  # from `mongotune final`: test_accuracy, report text/dict, confusion_matrix_path
    model: str | None = None
    dataset: str | None = None
    artifacts_root: str | None = None  # the study's shared artifact root, as its document names it
    objectives: list = field(default_factory=list)  # several objectives: [{name, goal}, ...]; one: []
    constraints: list = field(default_factory=list)  # [{metric, op, bound}]

    exp_key: str = ""  # the trials' exp_key (``mongotune:NAME``; a stock fmin experiment's own)

    def __post_init__(self):
        self.exp_key = self.exp_key or f"mongotune:{self.name}"

    @property
    def fields(self) -> list[str]:
        """The fields of a trial document this study's rows need (``trial_fields``)."""
        others = [str(o["name"]) for o in self.objectives[1:]] + [str(c["metric"]) for c in self.constraints]
        return trial_fields(self.metric, others)

    def to_json(self) -> dict:
        d = asdict(self)
        d["created"] = _iso(self.created)
        if d["final"]:
            d["final"] = {k: (_iso(v) if isinstance(v, datetime.datetime) else v) for k, v in d["final"].items()}
        return d


@dataclass
class TrialRow:
    tid: int
    state: str  # queued | running | ok | failed | pruned
    params: dict = field(default_factory=dict)
    loss: float | None = None  # what the search minimises
    metric: float | None = None  # the study metric's value
    curve: list = field(default_factory=list)  # [{"step": int, "value": float, "t": seconds since start}]
    pruned_at: int | None = None
    failure: dict | None = None  # {"kind", "reason"}
    worker: dict | None = None  # {"id", "host", "gpu", "pid"}
    started: datetime.datetime | None = None
    ended: datetime.datetime | None = None
    attempts: int = 0
    heartbeat_age_s: float | None = None  # running trials
    progress: dict | None = None  # running trials: epoch, epochs, metrics
    last_output: str | None = None  # running command trials: last stdout line
    refreshed: datetime.datetime | None = None  # the document's refresh_time (server clock)
    values: dict | None = None  # a study of several objectives: each one's value ({name: value})
    feasible: bool = True  # meets the study's constraints (``store.best.feasible``; none: always)

    def to_json(self) -> dict:
        d = asdict(self)
        for k in ("started", "ended", "refreshed"):
            d[k] = _iso(d[k])
        return d


def _iso(t):
    return t.isoformat() + "Z" if isinstance(t, datetime.datetime) and t.tzinfo is None else (
        t.isoformat() if isinstance(t, datetime.datetime) else t)


# ---------------------------------------------------------------- documents -> dataclasses
def study_info(doc: dict) -> StudyInfo:
    """A study document, read as ``Study`` reads it (older layouts upgraded there), as a ``StudyInfo``."""
    return info_of(Study.from_doc(doc))


def info_of(study: Study) -> StudyInfo:
    """A ``Study`` (a document's, or stock fmin jobs' ``Experiment``) as a ``StudyInfo``."""
    objective = study.objective or {}
    dataset = objective.get("dataset")
    return StudyInfo(
        name=study.name, objective=study.kind, metric=str(study.metric.get("name") or "loss"),
        goal="max" if study.goal == "max" else "min", max_evals=study.max_evals, status=study.status,
        created=study.created, space=study.space, final=study.final if isinstance(study.final, dict) else None,
        model=objective.get("model"),
        dataset=dataset.get("name") if isinstance(dataset, dict) else dataset,
        artifacts_root=study.artifacts_root if isinstance(study.artifacts_root, str) else None,
        exp_key=study.exp_key,
        objectives=list(study.objectives) if getattr(study, "metrics", None) else [],
        constraints=list(getattr(study, "constraints", None) or []),
    )


def _num(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _worker(rec: TrialRecord) -> dict | None:
    w = rec.worker
    return {"id": w.id, "host": w.host, "gpu": w.gpu, "pid": w.pid} if w is not None else None


def curve_of(rec: TrialRecord, metric: str) -> list[dict]:
    """The per-epoch monitored metric of the trial's latest run (``TrialRecord.last_curve``: a requeued
    trial starts its curve again), else one derived from ``result.history`` (trials written before curves)."""
    if rec.curve:
        return [{"step": p.step, "value": p.value, "t": _num(p.t)} for p in rec.last_curve if _num(p.value) is not None]
    history = rec.result.get("history") or {}
    key = next((k for k in (metric, "val_accuracy", "val_loss") if isinstance(history.get(k), list)), None)
    if key is None:
        return []
    seconds = rec.result.get("epoch_seconds") or []
    t: float | None = 0.0
    out = []
    for i, v in enumerate(history[key]):
        step_s = _num(seconds[i]) if i < len(seconds) else None
        t = None if t is None or step_s is None else t + step_s
        if _num(v) is not None:
            out.append({"step": i + 1, "value": float(v), "t": None if t is None else round(t, 3)})
    return out


def trial_row(rec: TrialRecord, metric: str, now: datetime.datetime | None = None,
              objectives: Iterable[dict] = ()) -> TrialRow:
    """One trial (``TrialRecord``) as a row; an ``error`` trial (hyperopt's) shows as failed."""
    result = rec.result
    state = "failed" if rec.outcome == "error" else rec.outcome
    loss = rec.loss if state in ("ok", "pruned") else None
    value = rec.metric_value(metric)
    failure = None
    if state == "failed":
        f = result.get("failure") or {}
        failure = {"kind": str(f.get("kind") or ("error" if rec.outcome == "error" else "unknown")),
                   "reason": str(f.get("reason") or "no reason recorded")}
    refreshed = rec.refresh_time
    ended = rec.finished or (refreshed if state in TERMINAL else None)
    started = rec.book_time
    if state == "queued":
        started = ended = None
    row = TrialRow(
        tid=rec.tid, state=state, params=rec.param_values, loss=loss, metric=value, curve=curve_of(rec, metric),
        pruned_at=result.get("pruned_at") if state == "pruned" else None, failure=failure, worker=_worker(rec),
        started=started, ended=ended, attempts=rec.attempts, refreshed=refreshed, feasible=rec.feasible,
        values={str(o["name"]): rec.metric_value(str(o["name"])) for o in objectives} or None,
    )
    if state == "running":
        if now is not None and isinstance(refreshed, datetime.datetime):
            row.heartbeat_age_s = round(max(0.0, (now - refreshed).total_seconds()), 2)
        if isinstance(rec.progress, dict):
            row.progress = rec.progress
            row.last_output = rec.progress.get("last_output")
    return row


def flatten(params: dict, prefix: str = "") -> dict[str, Any]:
    """``{"conv": {"blocks": 2}}`` -> ``{"conv.blocks": 2}``; lists become strings."""
    out: dict[str, Any] = {}
    for k, v in (params or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = str(list(v))
        else:
            out[key] = v
    return out


# ---------------------------------------------------------------- loaders
def get_study(db, name: str, *, jobs: str = "jobs") -> StudyInfo:
    """Study ``name`` (``StudyStore.resolve``: a study document, or stock fmin jobs of that exp_key)."""
    return info_of(StudyStore(db).resolve(name, _store(db, jobs)))


def _rows(records: Iterable[TrialRecord], info: StudyInfo, now) -> list[TrialRow]:
    return [trial_row(rec, info.metric, now, info.objectives) for rec in records]


def _store(db, jobs: str) -> TrialStore:
    return TrialStore(db, db[jobs])


def load_study_data(db, name: str, *, jobs: str = "jobs") -> tuple[StudyInfo, list[TrialRow]]:
    """The study and all its trials, sorted by tid."""
    info = get_study(db, name, jobs=jobs)
    records = _store(db, jobs).records(info.exp_key, fields=info.fields, lenient=True)
    return info, _rows(records, info, server_now(db))


def list_study_infos(db, *, jobs: str = "jobs", experiments: bool = True) -> list[StudyInfo]:
    """Every study, oldest first (the studies collection is small: one document per study), then the
    experiments of stock fmin jobs by name (``experiments``: a read of every job's exp_key)."""
    store = StudyStore(db)
    found = [info_of(s) for s in store.list()]
    return found + ([info_of(e) for e in store.experiments(_store(db, jobs))] if experiments else [])


def done_counts(rows: Iterable[TrialRow], into: dict[str, int] | None = None) -> dict[str, int]:
    """Finished trials per worker id among ``rows`` (added to ``into``); lease-expiry failures are nobody's."""
    out = {} if into is None else into
    for r in rows:
        wid = (r.worker or {}).get("id")
        if r.state in TERMINAL and wid and not (r.failure and r.failure.get("kind") == "lease"):
            out[wid] = out.get(wid, 0) + 1
    return out


class TrialLoader:
    """Keeps one study's rows current with reads of the changed trials only.

    ``refresh()`` returns the rows that changed since the last call.  After the
    first full read it asks ``TrialStore.changed`` for trials written at or after
    the last read's server time less ``overlap_s`` (a write stamped just before a
    read may commit just after it) and, when the jobs collection's size moved
    (an insert sets no ``refresh_time``) or every ``queued_every``-th time, for the
    queued trials: reads of one field each, which the embedded server answers
    without decoding the study, and a collection count from its metadata.
    """

    def __init__(self, db, name: str, *, jobs: str = "jobs", overlap_s: float = 2.0, queued_every: int = 10):
        self.db, self.name, self.jobs, self.overlap_s = db, name, jobs, overlap_s
        self.queued_every = queued_every
        self._size: int | None = None
        self._calls = 0
        self.store = _store(db, jobs)
        self.info: StudyInfo | None = None
        self.rows: dict[int, TrialRow] = {}
        self._since: datetime.datetime | None = None
        self.now: datetime.datetime | None = None
        self.docs_read = 0  # trial documents read so far (the cost that grows on the embedded server)

    def refresh(self) -> list[TrialRow]:
        self.info = get_study(self.db, self.name, jobs=self.jobs)
        now = server_now(self.db)
        self.now = now
        size = self.store.size()
        self._calls += 1
        if self._since is None:
            records = self.store.records(self.info.exp_key, fields=self.info.fields, lenient=True)
        else:
            queued = size != self._size or self._calls % self.queued_every == 0
            records = self.store.changed(self.info.exp_key, self._since, queued=queued,
                                         fields=self.info.fields, lenient=True)
        self._size = size
        fresh = _rows(records, self.info, now)
        self.docs_read += len(fresh)
        self._since = now - datetime.timedelta(seconds=self.overlap_s)
        changed = []
        for row in fresh:
            old = self.rows.get(row.tid)
            if old != row:
                self.rows[row.tid] = row
                changed.append(row)
        # heartbeat ages move with the clock even when a trial's document does not
        for row in self.rows.values():
            if row.state == "running" and isinstance(row.refreshed, datetime.datetime):
                row.heartbeat_age_s = round(max(0.0, (now - row.refreshed).total_seconds()), 2)
        changed.sort(key=lambda r: r.tid)
        return changed

    def sorted_rows(self) -> list[TrialRow]:
        return [self.rows[t] for t in sorted(self.rows)]


def rows_by_state(rows: Iterable[TrialRow]) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    return counts
