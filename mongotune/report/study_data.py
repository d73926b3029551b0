"""What the report and the dashboard draw: a study and its trials, as plain dataclasses.

``StudyInfo`` and ``TrialRow`` are the only input of the chart builders
(``charts.py``); nothing there reads MongoDB.  The loaders below turn today's
raw documents (``db.studies`` and hyperopt's trial documents in ``db.jobs``)
into them; they are thin on purpose, so that the trial-document module
(``store/trialdoc.py``) can feed the same dataclasses later.

``TrialLoader`` is the dashboard's incremental reader: after a first full read
it asks only for trials whose ``refresh_time`` moved (every write to a trial
sets it) plus trials it has not seen (queued ones have none), so an update
reads the trials that changed, not the whole study.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from ..store.trialdoc import server_now  # noqa: F401  (re-exported: the report and dashboard judge ages on it)

STATES = ("queued", "running", "ok", "failed", "pruned")
TERMINAL = ("ok", "failed", "pruned")

# hyperopt's job states
_NEW, _RUNNING, _DONE, _ERROR = 0, 1, 2, 3

#: fields of a trial document the rows need (never the pickled spec, misc or per-class reports)
TRIAL_FIELDS = ("tid", "state", "params", "result.status", "result.loss", "result.failure.kind",
                "result.failure.reason", "result.pruned", "result.pruned_at", "result.history",
                "result.epoch_seconds", "result.val_accuracy", "result.val_loss", "result.metric",
                "result.epochs", "result.best_epoch", "result.x", "curve", "worker", "book_time",
                "refresh_time", "finished", "attempts", "progress", "last_output", "version", "duration_s")

@dataclass
class StudyInfo:
    name: str
    objective: str = "keras"  # keras | command | synthetic | sleep | ...
    metric: str = "loss"  # the study metric's name, e.g. val_accuracy
    goal: str = "min"  # min | max
    max_evals: int | None = None
    status: str | None = None
    created: datetime.datetime | None = None
    space: dict | None = None  # the study's JSON space, when it has one
    final: dict | None = None  # from `mongotune final`: test_accuracy, report text/dict, confusion_matrix_path
    model: str | None = None
    dataset: str | None = None

    @property
    def exp_key(self) -> str:
        return f"mongotune:{self.name}"

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
    worker: dict | None = None  # {"id", "host", "gpu"}
    started: datetime.datetime | None = None
    ended: datetime.datetime | None = None
    attempts: int = 0
    heartbeat_age_s: float | None = None  # running trials
    progress: dict | None = None  # running trials: epoch, epochs, metrics
    last_output: str | None = None  # running command trials: last stdout line
    refreshed: datetime.datetime | None = None  # the document's refresh_time (server clock)

    def to_json(self) -> dict:
        d = asdict(self)
        for k in ("started", "ended", "refreshed"):
            d[k] = _iso(d[k])
        return d


def _iso(t):
    return t.isoformat() + "Z" if isinstance(t, datetime.datetime) and t.tzinfo is None else (
        t.isoformat() if isinstance(t, datetime.datetime) else t)


# ---------------------------------------------------------------- documents -> dataclasses
def metric_of(study_doc: dict) -> tuple[str, str]:
    """The study metric's name and goal.

    A study document may say it (``metric: {"name", "goal"}``); otherwise a
    Keras study's ``training.loss`` implies it, and any other objective is
    judged by its loss.
    """
    m = study_doc.get("metric")
    if isinstance(m, dict) and m.get("name"):
        return str(m["name"]), ("max" if m.get("goal") == "max" else "min")
    if isinstance(m, str) and m:
        return m, ("max" if "acc" in m else "min")
    for key in ("objective_settings", "options"):  # a command study's settings name its metric and goal
        settings = study_doc.get(key)
        if isinstance(settings, dict) and isinstance(settings.get("metric"), str) and settings["metric"]:
            return settings["metric"], ("min" if settings.get("goal") == "min" else "max")
    if study_doc.get("objective", "keras") == "keras":
        loss = (study_doc.get("training") or {}).get("loss", "neg_val_accuracy")
        return ("val_loss", "min") if loss == "val_loss" else ("val_accuracy", "max")
    return "loss", "min"


def study_info(doc: dict) -> StudyInfo:
    from ..store import decode

    doc = decode(doc)
    metric, goal = metric_of(doc)
    dataset = doc.get("dataset")
    return StudyInfo(
        name=doc["_id"], objective=doc.get("objective", "keras"), metric=metric, goal=goal,
        max_evals=doc.get("max_evals"), status=doc.get("status"), created=doc.get("created"),
        space=doc.get("space"), final=doc.get("final"), model=doc.get("model"),
        dataset=dataset.get("name") if isinstance(dataset, dict) else dataset,
    )


def _num(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _state(doc: dict, result: dict) -> str:
    s = doc.get("state")
    if s == _NEW:
        return "queued"
    if s == _RUNNING:
        return "running"
    if result.get("pruned"):
        return "pruned"
    if s == _DONE and result.get("status") == "ok":
        return "ok"
    return "failed"


def curve_of(doc: dict, metric: str) -> list[dict]:
    """The per-epoch monitored metric: the ``curve`` field, else one derived from ``result.history``."""
    curve = doc.get("curve")
    if isinstance(curve, list) and curve:
        out = []
        for i, p in enumerate(curve):
            if isinstance(p, dict) and _num(p.get("value")) is not None:
                out.append({"step": int(p.get("step", i + 1)), "value": float(p["value"]),
                            "t": _num(p.get("t"))})
        return out
    result = doc.get("result") or {}
    history = result.get("history") or {}
    key = next((k for k in (metric, "val_accuracy", "val_loss") if isinstance(history.get(k), list)), None)
    if key is None:
        return []
    seconds = result.get("epoch_seconds") or []
    t: float | None = 0.0
    out = []
    for i, v in enumerate(history[key]):
        step_s = _num(seconds[i]) if i < len(seconds) else None
        t = None if t is None or step_s is None else t + step_s
        if _num(v) is not None:
            out.append({"step": i + 1, "value": float(v), "t": None if t is None else round(t, 3)})
    return out


def trial_row(doc: dict, metric: str, now: datetime.datetime | None = None) -> TrialRow:
    """One trial document (decoded) as a row."""
    result = doc.get("result") or {}
    state = _state(doc, result)
    loss = _num(result.get("loss")) if state in ("ok", "pruned") else None
    if metric == "loss":
        value = loss
    else:
        value = _num(result.get(metric))
        if value is None and isinstance(result.get("metric"), (int, float)):
            value = _num(result.get("metric"))
    if state not in ("ok", "pruned"):
        value = None
    failure = None
    if state == "failed":
        f = result.get("failure") or {}
        failure = {"kind": str(f.get("kind") or ("error" if doc.get("state") == _ERROR else "unknown")),
                   "reason": str(f.get("reason") or "no reason recorded")}
    w = doc.get("worker")
    worker = {"id": w.get("id"), "host": w.get("host"), "gpu": w.get("gpu")} if isinstance(w, dict) else None
    refreshed = doc.get("refresh_time")
    ended = doc.get("finished") or (refreshed if state in TERMINAL else None)
    started = doc.get("book_time")
    if state == "queued":
        started = ended = None
    row = TrialRow(
        tid=int(doc.get("tid", -1)), state=state, params=doc.get("params") or {}, loss=loss, metric=value,
        curve=curve_of(doc, metric), pruned_at=result.get("pruned_at") if state == "pruned" else None,
        failure=failure, worker=worker, started=started, ended=ended, attempts=int(doc.get("attempts") or 0),
        refreshed=refreshed,
    )
    if state == "running":
        if now is not None and isinstance(refreshed, datetime.datetime):
            row.heartbeat_age_s = round(max(0.0, (now - refreshed).total_seconds()), 2)
        progress = doc.get("progress")
        if isinstance(progress, dict):
            row.progress = progress
            row.last_output = progress.get("last_output")
        row.last_output = doc.get("last_output") or row.last_output
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
def get_study(db, name: str) -> StudyInfo:
    from ..errors import StudyNotFound

    doc = db.studies.find_one({"_id": name})
    if doc is None:
        known = [d["_id"] for d in db.studies.find({}, projection=["_id"]).limit(20)]
        hint = f"; known: {', '.join(map(str, known))}" if known else "; no studies yet"
        raise StudyNotFound(f"no study named {name!r}{hint}")
    return study_info(doc)


def _rows(db, info: StudyInfo, query: dict, now, jobs: str) -> list[TrialRow]:
    from ..store import decode

    cursor = db[jobs].find({"exp_key": info.exp_key, **query}, projection=list(TRIAL_FIELDS))
    return [trial_row(decode(d), info.metric, now) for d in cursor]


def load_study_data(db, name: str, *, jobs: str = "jobs") -> tuple[StudyInfo, list[TrialRow]]:
    """The study and all its trials, sorted by tid."""
    info = get_study(db, name)
    rows = _rows(db, info, {}, server_now(db), jobs)
    rows.sort(key=lambda r: r.tid)
    return info, rows


def list_study_infos(db) -> list[StudyInfo]:
    """Every study, oldest first (the studies collection is small: one document per study)."""
    return [study_info(d) for d in db.studies.find({}).sort("created", 1)]


def load_workers(db, now: datetime.datetime | None = None, *, include_gone_s: float = 300.0) -> list[dict]:
    """Workers seen in the last ``include_gone_s`` seconds, with their state (idle, running, lost, stopped)."""
    from ..store.workers import LIVE_S as WORKER_LIVE_S

    now = now or server_now(db)
    cutoff = now - datetime.timedelta(seconds=include_gone_s)
    rows = []
    for w in db.workers.find({"heartbeat": {"$gte": cutoff}},
                             projection=["_id", "host", "pid", "gpu", "study", "status", "current", "heartbeat",
                                         "trials_done"]).sort("_id", 1):
        age = (now - w["heartbeat"]).total_seconds() if isinstance(w.get("heartbeat"), datetime.datetime) else None
        if w.get("status") == "stopped":
            state = "stopped"
        elif age is None or age > WORKER_LIVE_S:
            state = "lost"
        else:
            state = w.get("status") or "idle"
        rows.append({"id": str(w["_id"]), "host": w.get("host"), "pid": w.get("pid"), "gpu": w.get("gpu"),
                     "study": w.get("study"), "state": state, "current": w.get("current"),
                     "trials_done": w.get("trials_done"), "heartbeat_age_s": None if age is None else round(age, 1)})
    return rows


class TrialLoader:
    """Keeps one study's rows current with reads of the changed trials only.

    ``refresh()`` returns the rows that changed since the last call.  After the
    first full read it asks for trials whose ``refresh_time`` is at or after the
    last read's server time less ``overlap_s`` (a write stamped just before a
    read may commit just after it), for queued trials, and for tids past the
    highest one seen.
    """

    def __init__(self, db, name: str, *, jobs: str = "jobs", overlap_s: float = 2.0):
        self.db, self.name, self.jobs, self.overlap_s = db, name, jobs, overlap_s
        self.info: StudyInfo | None = None
        self.rows: dict[int, TrialRow] = {}
        self._since: datetime.datetime | None = None
        self.now: datetime.datetime | None = None
        self.docs_read = 0  # trial documents read so far (the cost that grows on the embedded server)

    def refresh(self) -> list[TrialRow]:
        self.info = get_study(self.db, self.name)
        now = server_now(self.db)
        self.now = now
        if self._since is None:
            fresh = _rows(self.db, self.info, {}, now, self.jobs)
        else:
            # three narrow queries the embedded server answers from its indexes: documents written
            # since the last read, queued ones (an operator's requeue leaves refresh_time alone),
            # and tids past the last one seen (new trials); a count or a scan of every tid would
            # cost as much as reading the study again
            top = max(self.rows, default=-1)
            fresh = {}
            for query in ({"refresh_time": {"$gte": self._since}}, {"state": _NEW}, {"tid": {"$gt": top}}):
                for row in _rows(self.db, self.info, query, now, self.jobs):
                    fresh[row.tid] = row
            fresh = list(fresh.values())
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
