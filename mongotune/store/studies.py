"""Study documents: a generic core plus the objective's own settings, as plain JSON in ``db.studies``.

The core is what every study has whatever it trains: a name, the resolved
search space (JSON, so the coordinator needs neither TensorFlow nor the
dataset to resume), the budget, the search algorithm and its options, the
pruner, the metric its trials report and which way is better, and the lease
settings.  ``objective`` holds the settings of the kind of trial a worker
runs, ``{"kind": "keras", ...}``, ``{"kind": "command", ...}``: the
``mongotune.objectives`` package reads and validates them.  No code or data is
ever pickled into MongoDB.

A study has one identity everywhere: its ``exp_key`` (``mongotune:NAME``),
hyperopt's experiment key, which every trial document carries.

The study document also holds the lease of the coordinator running it, so a
study has at most one live coordinator, and the count of trials that
coordinators have created, raised atomically under that lease before any
trial is inserted, so that no interleaving of coordinators exceeds the budget.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ConfigError, StudyNotFound, UserError
from ..search.defaults import ALGORITHM
from ._codec import decode, encode
from ._defaults import DEFAULT_LEASE_S, DEFAULT_MAX_ATTEMPTS

EXP_KEY_PREFIX = "mongotune:"
GOALS = ("min", "max")
COORDINATOR_LEASE_S = 30.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def _now():
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def exp_key_of(name: str) -> str:
    return EXP_KEY_PREFIX + name


def spare_for(live_workers: int) -> int:
    """The default number of trials queued beyond the idle workers: a third of the pool, at least 1.

    Workers that finish while the coordinator is between polls find these
    waiting.  Measured (bench/bench_pool.py, 8 workers, 1 s trials, embedded
    server, separate runs): pool efficiency 0.82-0.86 with 1 spare, 0.87-0.89 with 2,
    0.88-0.92 with 3.  More spares mean TPE suggests with fewer results known.
    """
    return max(1, round(live_workers / 3))


def boot_id() -> str:
    """This machine's boot id (Linux), so "same host" means the same running kernel, not just a name."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def holder_info() -> dict:
    """Who a coordinator is: host, boot id and pid."""
    import os
    import socket

    return {"host": socket.gethostname(), "boot_id": boot_id(), "pid": os.getpid()}


def _dead_here(holder: dict) -> bool:
    """Was ``holder`` a process of this machine that has exited?"""
    import os
    import socket

    if not holder or holder.get("host") != socket.gethostname() or holder.get("boot_id") != boot_id():
        return False
    if not holder.get("boot_id") or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class StudyBusy(UserError):
    """Another coordinator holds the study's lease."""


@dataclass
class Study:
    name: str
    max_evals: int
    objective: dict  # {"kind": ..., the kind's own settings}
    space: dict | None = None  # resolved JSON space (None only in studies written before it was stored)
    metric: dict = field(default_factory=lambda: {"name": "loss", "goal": "min"})  # the (first) objective
    metrics: list | None = None  # several objectives: [{name, goal}, ...], ``metric`` the first; None: one
    constraints: list = field(default_factory=list)  # [{metric, op: "<=" | ">=", bound}]
    search: dict = field(default_factory=lambda: {"algo": ALGORITHM})  # algorithm and its options
    pruner: dict | None = None  # {"kind": "median"|"asha"|"hyperband", ...options}; None: no pruning
    lease_s: float = DEFAULT_LEASE_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    queue_spare: int | None = None  # trials queued beyond the idle workers; None: spare_for(live workers)
    seed: int = 0
    artifacts_root: str | None = None  # optional shared root; each worker decides whether it may use it
    artifact_store: str | None = None  # checkpoints' store: auto (None), local or gridfs (store.artifacts)
    status: str = "created"
    created: datetime.datetime | None = None
    updated: datetime.datetime | None = None
    best: dict | None = None
    final: dict | None = None

    # ------------------------------------------------------------ identity and shortcuts
    @property
    def exp_key(self) -> str:
        return exp_key_of(self.name)

    @property
    def kind(self) -> str:
        return str(self.objective.get("kind"))

    @property
    def algo(self) -> str:
        return str(self.search.get("algo", ALGORITHM))

    @property
    def goal(self) -> str:
        return str(self.metric.get("goal", "min"))

    @property
    def objectives(self) -> list[dict]:
        """The study's objectives, ``[{name, goal}, ...]``: its ``metrics``, or its one ``metric``."""
        return [dict(m) for m in self.metrics] if self.metrics else [dict(self.metric)]

    # ------------------------------------------------------------ checks
    def validate(self) -> "Study":
        if not _NAME.match(self.name or ""):
            raise ConfigError(f"bad study name {self.name!r}: use letters, digits, '-', '_', '.' (max 100)")
        if isinstance(self.max_evals, bool) or not isinstance(self.max_evals, int) or self.max_evals < 1:
            raise ConfigError(f"--max-evals must be a positive integer, got {self.max_evals}")
        if not isinstance(self.objective, dict) or not self.objective.get("kind"):
            raise ConfigError("a study needs an objective with a 'kind'")
        if self.metric.get("goal") not in GOALS or not self.metric.get("name"):
            raise ConfigError(f"the metric needs a name and a goal of min or max, got {self.metric}")
        _check_objectives(self.metric, self.metrics, self.constraints)
        if self.queue_spare is not None and self.queue_spare < 0:
            raise ConfigError(f"--queue-spare must be >= 0, got {self.queue_spare}")
        if self.lease_s <= 0 or self.max_attempts < 1:
            raise ConfigError("--lease must be > 0 seconds and --max-attempts >= 1")
        from .artifacts import check_kind

        check_kind(self.artifact_store)
        return self

    # ------------------------------------------------------------ documents
    def to_doc(self) -> dict:
        doc = asdict(self)
        for key in ("metrics", "constraints"):  # a study of one metric is stored as it always was
            if not doc[key]:
                del doc[key]
        doc["_id"] = self.name
        doc["exp_key"] = self.exp_key
        return doc

    @classmethod
    def from_doc(cls, doc: dict) -> "Study":
        doc = _upgrade(decode(doc))
        return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})


def _check_objectives(metric: dict, metrics: list | None, constraints: list) -> None:
    """Several objectives: each a name and a goal, no name twice, ``metric`` the first; each constraint a
    metric, ``<=`` or ``>=`` and a finite bound."""
    import math

    if metrics is not None:
        if not isinstance(metrics, list) or not metrics:
            raise ConfigError(f"the metrics must be a non-empty list, got {metrics!r}")
        for m in metrics:
            if not isinstance(m, dict) or not m.get("name") or m.get("goal") not in GOALS:
                raise ConfigError(f"each metric needs a name and a goal of min or max, got {m!r}")
        names = [m["name"] for m in metrics]
        if len(set(names)) != len(names):
            raise ConfigError(f"a metric is named twice: {', '.join(names)}")
        if {"name": metric.get("name"), "goal": metric.get("goal")} != {"name": names[0], "goal": metrics[0]["goal"]}:
            raise ConfigError("the study's metric must be the first of its metrics")
    for c in constraints if isinstance(constraints, list) else [constraints]:
        ok = isinstance(c, dict) and isinstance(c.get("metric"), str) and c["metric"] and c.get("op") in ("<=", ">=")
        bound = c.get("bound") if isinstance(c, dict) else None
        if not ok or isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
            raise ConfigError(f"a constraint needs a metric, <= or >= and a finite bound, got {c!r}")


#: the objective kind of stock hyperopt ``fmin`` jobs (run by ``mongotune hyperopt-worker``): no study document
STOCK_FMIN_KIND = "hyperopt"


class Experiment(Study):
    """Stock hyperopt ``fmin`` jobs seen as a study: ``MongoTrials(url, exp_key=K)`` queues them without a
    study document, ``mongotune hyperopt-worker`` runs them.  Its name is its exp_key, its metric the loss
    its objective returns (minimised), its budget the jobs queued so far."""

    @property
    def exp_key(self) -> str:
        return self.name


def experiment(name: str, trials) -> Experiment:
    """The ``Experiment`` of exp_key ``name`` in ``trials`` (a ``TrialStore``), from one ``find`` of its jobs'
    states (no aggregation: the dashboard's handle sends reads only)."""
    from .trialdoc import QUEUED, RUNNING

    states = trials.states(name)
    total, busy = len(states), sum(1 for s in states if s in (QUEUED, RUNNING))
    return Experiment(name=name, max_evals=total, objective={"kind": STOCK_FMIN_KIND},
                      search={"algo": "fmin"}, status="running" if busy else "done")


def _upgrade(doc: dict) -> dict:
    """Read a study written before the generic core (objective name + Keras fields at the top)."""
    if isinstance(doc.get("objective"), dict):
        return doc
    from ..objectives.kinds import upgrade_legacy

    search = {"algo": doc.get("algo", "tpe")}
    if doc.get("startup_trials") is not None:
        search["startup_trials"] = doc["startup_trials"]
    return {**doc, **upgrade_legacy(doc), "search": search}


class StudyStore:
    """The ``studies`` collection: CRUD, the coordinator's lease, and the trial budget fence."""

    def __init__(self, db):
        self.db = db
        self.coll = db.studies

    def ensure_indexes(self) -> None:
        self.coll.create_index("created")
        self.coll.create_index("exp_key")

    # ------------------------------------------------------------ CRUD
    def create(self, study: Study, *, exist_ok: bool = False) -> Study:
        import pymongo.errors

        study.validate()
        study.created = study.updated = _now()
        study.status = "created"
        try:
            self.coll.insert_one(encode(study.to_doc()))
        except pymongo.errors.DuplicateKeyError:
            if not exist_ok:
                raise ConfigError(
                    f"study {study.name!r} already exists; use `mongotune resume {study.name}` or another --study"
                ) from None
            return self.get(study.name)
        return study

    def get(self, name: str) -> Study:
        doc = self.coll.find_one({"_id": name})
        if doc is None:
            known = [d["_id"] for d in self.coll.find({}, projection=["_id"]).limit(20)]
            hint = f"; known: {', '.join(known)}" if known else "; no studies yet"
            raise StudyNotFound(f"no study named {name!r}{hint}")
        return Study.from_doc(doc)

    def find(self, name: str) -> Study | None:
        doc = self.coll.find_one({"_id": name})
        return Study.from_doc(doc) if doc else None

    def resolve(self, name: str, trials) -> Study:
        """Study ``name`` as the views show it: its document, else the stock fmin jobs of exp_key ``name`` in
        ``trials`` (a ``TrialStore``) as an ``Experiment``; StudyNotFound when there is neither."""
        doc = self.coll.find_one({"_id": name})
        if doc is not None:
            return Study.from_doc(doc)
        if name.startswith(EXP_KEY_PREFIX) or not trials.has_exp_key(name):
            self.get(name)  # raises StudyNotFound, naming the known studies
        return experiment(name, trials)

    def experiments(self, trials) -> list[Experiment]:
        """Every exp_key of stock fmin jobs in ``trials`` (a ``TrialStore``), as ``Experiment``s, by name."""
        keys = sorted(k for k in trials.exp_keys()
                      if isinstance(k, str) and k and not k.startswith(EXP_KEY_PREFIX))
        return [experiment(k, trials) for k in keys]

    def objectives(self) -> dict[str, dict]:
        """Every study's ``objective`` setting by exp_key (what a worker asks before it takes trials)."""
        out = {}
        for d in self.coll.find({}, projection=["exp_key", "objective"]):
            obj = d.get("objective")
            out[d.get("exp_key") or f"{EXP_KEY_PREFIX}{d['_id']}"] = obj if isinstance(obj, dict) else {"kind": obj}
        return out

    def by_exp_key(self, exp_key: str) -> Study | None:
        doc = self.coll.find_one({"exp_key": exp_key})
        return Study.from_doc(doc) if doc else None

    def list(self) -> list[Study]:
        import pymongo

        return [Study.from_doc(d) for d in self.coll.find().sort("created", pymongo.ASCENDING)]

    def update(self, name: str, **fields: Any) -> None:
        fields["updated"] = _now()
        self.coll.update_one({"_id": name}, {"$set": encode(fields)})

    # ------------------------------------------------------------ the coordinator's lease
    def acquire_coordinator(self, name: str, holder: dict, lease_s: float = COORDINATOR_LEASE_S) -> str:
        """Become the study's only coordinator; return the lease token.

        Raises ``StudyBusy`` (naming the holder) while another coordinator's
        lease is fresh.  A holder that stopped heart-beating for ``lease_s``
        is taken over.
        """
        from .trialdoc import new_token, server_now

        self.get(name)  # a clear error for an unknown study
        token = new_token()
        now = server_now(self.db)
        cutoff = now - datetime.timedelta(seconds=lease_s)
        takeable: list[dict] = [{"coordinator": None}, {"coordinator.heartbeat": {"$lt": cutoff}}]
        current = self.coordinator(name) or {}
        if _dead_here(current):  # a coordinator of this machine that no longer runs: no need to wait
            takeable.append({"coordinator.token": current.get("token")})
        res = self.coll.update_one(
            {"_id": name, "$or": takeable},
            {"$set": {"coordinator": {**encode(holder), "token": token, "lease_s": lease_s, "since": now,
                                      "heartbeat": now}}})
        if res.matched_count == 1:
            return token
        doc = self.coll.find_one({"_id": name}, projection=["coordinator"]) or {}
        c = doc.get("coordinator") or {}
        age = (server_now(self.db) - c["heartbeat"]).total_seconds() if c.get("heartbeat") else None
        seen = f", last heard from {age:.0f}s ago" if age is not None else ""
        left = f"; its lease runs out {max(0.0, lease_s - age):.0f}s after its last heartbeat" if age is not None else ""
        raise StudyBusy(f"study {name!r} is being run by another coordinator ({c.get('host')}, pid "
                        f"{c.get('pid')}{seen}{left}); wait for it to end, or pass --wait to start when it does")

    def beat_coordinator(self, name: str, token: str) -> bool:
        res = self.coll.update_one({"_id": name, "coordinator.token": token},
                                   {"$currentDate": {"coordinator.heartbeat": True}})
        return res.matched_count == 1

    def release_coordinator(self, name: str, token: str) -> None:
        self.coll.update_one({"_id": name, "coordinator.token": token}, {"$set": {"coordinator": None}})

    def coordinator(self, name: str) -> dict | None:
        doc = self.coll.find_one({"_id": name}, projection=["coordinator"]) or {}
        return doc.get("coordinator")

    # ------------------------------------------------------------ the budget fence
    def reset_created(self, name: str, token: str, n: int) -> bool:
        """After taking the lease: the count of trials that exist is the truth."""
        res = self.coll.update_one({"_id": name, "coordinator.token": token}, {"$set": {"trials_created": n}})
        return res.matched_count == 1

    def claim_trials(self, name: str, token: str, n: int, max_evals: int) -> bool:
        """Raise the created-trials count by ``n`` if this coordinator still holds the lease and the
        budget allows it: one conditional write, so two coordinators can never both succeed past it."""
        res = self.coll.update_one(
            {"_id": name, "coordinator.token": token, "trials_created": {"$lte": max_evals - n}},
            {"$inc": {"trials_created": n}})
        return res.matched_count == 1
