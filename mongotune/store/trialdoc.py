"""The trial document: its schema, every write to it, and every read of it.

A trial is hyperopt's job document in the jobs collection (``tid``, ``spec``,
``misc``, ``result``, ``state``, ``owner``, ``book_time``, ``refresh_time``,
``exp_key``, ``version``) plus mongotune's fields, declared here in
``TrialRecord``.  Nothing else in mongotune writes to a trial: the coordinator,
the workers, the CLI and the reports go through ``TrialStore``.

Every write is one named transition, and each is a single conditional
update, so that whatever the interleaving of workers, coordinators and
retries, a transition either applies to the state it was meant for or
matches nothing:

==============  ==================================  =========================================
transition      applies to                          effect
==============  ==================================  =========================================
``stamp``       a new trial (before fmin inserts)   params, attempts 0, empty curve
``reserve``     queued trials of given studies      running, fresh lease token per attempt
``heartbeat``   running, this lease                 refresh_time (server clock), progress
``report``      running, this lease, step not seen  one point appended to the curve (a run's
                                                    points thinned past CURVE_MAX_POINTS)
``finish``      running under this lease, or        done with the result (ok, fail or pruned)
                queued/running after this lease     and the attempt's artifacts; a late result
                expired (first finished wins)       also moves its run's points to the end
``checkpoint``  running, this lease                 the pointer to its latest complete checkpoint
                                                    (the previous pointer returned, to delete)
``resume``      running, this lease                 the checkpointed run's points up to its step
                                                    carried into this run (the curve continues)
``release``     running, this lease                 queued again, no attempt counted
``requeue``     running or error (operator)         queued again with the reason
``expire``      running, heartbeat older than       queued again (attempt counted) or failed
                the study's lease (checked again    after ``max_attempts``; nothing for a lease
                in the write itself)                after the server is reached again
==============  ==================================  =========================================

A lease is named by the study, the tid *and* the token, so a heartbeat or a
result can only ever land on the trial it was taken for.  Writes that a
retry may repeat are idempotent: a curve point is appended only if its step
is not there yet, and a finish or release whose reply was lost is recognised
by the token it left behind (``finished_lease``, ``requeues.token``).

A result computed under a lease that expired meanwhile (a worker frozen or
cut off from the database) is still taken if nobody has finished the trial
yet: the trial ends with it, and a worker that had taken the trial over sees
its own lease end at its next heartbeat and stops.  A trial already finished
never changes again.  The trial then keeps the result, the curve and the
artifacts of that one attempt: ``finish`` writes the attempt's artifacts and
puts its run last on the curve (readers take the last run as the trial's).

A trial's document stays small whatever its objective prints: each run's
curve is capped (past CURVE_MAX_POINTS points it is thinned to half as many,
spread evenly over its steps, the first and the last kept, and any step the
pruner decides at).

Expiry is judged twice: a trial is read as stale, and the write that requeues
it matches only while its heartbeat is still older than the lease, so a
heartbeat that lands in between keeps it.  And for one lease after the
server is reached again (an outage, a restart), nothing expires: every worker
was cut off as long as the reaper, and gets a full lease to heartbeat again.
A return counts when this store's own reap failed and then got through, or
when its client's monitor lost the server and found it again
(``_Reachability``).
"""

from __future__ import annotations

import datetime
import logging
import math
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

import pymongo
import pymongo.errors
import pymongo.monitoring
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._codec import decode, encode
from ._defaults import DEFAULT_LEASE_S, DEFAULT_MAX_ATTEMPTS  # noqa: F401 (part of this module's API)
from .best import feasible, metric_value, pick_best, rank_key
from .best import ranked as by_rank

log = logging.getLogger("mongotune.trials")

#: hyperopt's job states (``hyperopt.base.JOB_STATE_*``), spelled out so that readers need not import hyperopt
QUEUED, RUNNING, DONE, ERROR = 0, 1, 2, 3
TRACEBACK_TAIL_LINES = 15
CURVE_MAX_POINTS = 1000  # points of one run on a trial's curve before it is thinned to half (~100 kB)

Outcome = Literal["queued", "running", "ok", "failed", "pruned", "error"]


# ====================================================================== schema
class Failure(BaseModel):
    """Why a trial failed: a short machine-readable ``kind`` and a one-line ``reason``."""

    model_config = ConfigDict(extra="allow")
    kind: str
    reason: str
    traceback: str | None = None


class Result(BaseModel):
    """A finished trial's ``result``: hyperopt's ``status`` and ``loss`` plus mongotune's fields.

    ``loss`` is what the search minimises.  A pruned trial is ``ok`` (the
    search learns from it) with ``pruned`` set and the step it stopped at.
    Objectives add their own metrics as extra fields.
    """

    model_config = ConfigDict(extra="allow")
    status: Literal["ok", "fail"]
    loss: float | None = None
    pruned: bool = False
    pruned_at: int | None = None
    failure: Failure | None = None

    def to_doc(self) -> dict:
        doc = self.model_dump(exclude_none=True)
        if not self.pruned:
            doc.pop("pruned", None)
        return doc


class CurvePoint(BaseModel):
    """One reading of the study's metric during a trial (one per epoch for Keras trials)."""

    step: int
    value: float
    t: float = 0.0  # seconds since the attempt started
    at: datetime.datetime | None = None  # wall-clock time (UTC) of the reading
    attempt: int = 1
    lease: str = ""  # which reservation recorded it: a trial run again starts its curve again (earlier points stay)


class WorkerInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    host: str | None = None
    pid: int | None = None
    gpu: str | None = None


class ArtifactsRef(BaseModel):
    """Where a trial's files went: which host, which directory (one per attempt)."""

    host: str
    path: str


class TrialRecord(BaseModel):
    """A trial as readers see it (a validated view of the stored document)."""

    model_config = ConfigDict(extra="ignore", arbitrary_types_allowed=True)
    id: Any = Field(alias="_id")
    tid: int
    exp_key: str
    state: int
    params: dict = Field(default_factory=dict)
    result: dict = Field(default_factory=dict)
    curve: list[CurvePoint] = Field(default_factory=list)
    attempts: int = 0
    worker: WorkerInfo | None = None
    book_time: datetime.datetime | None = None
    refresh_time: datetime.datetime | None = None
    finished: datetime.datetime | None = None
    duration_s: float | None = None
    progress: dict | None = None
    artifacts: ArtifactsRef | None = None
    checkpoint: dict | None = None  # the latest complete checkpoint (pool.checkpoints): prefix, step, lease, files
    requeues: list[dict] = Field(default_factory=list)
    lease_expiries: list[dict] = Field(default_factory=list)
    version: int = 0
    misc: Any = None  # hyperopt's: its ``vals`` are the params of stock fmin jobs (``param_values``)

    @property
    def outcome(self) -> Outcome:
        return outcome_of(self.state, self.result)

    @property
    def last_curve(self) -> list[CurvePoint]:
        """The curve of the trial's latest run (earlier runs of a requeued trial stay in ``curve``)."""
        if not self.curve:
            return []
        latest = self.curve[-1].lease
        return [p for p in self.curve if p.lease == latest]

    @property
    def loss(self) -> float | None:
        loss = self.result.get("loss") if self.result.get("status") == "ok" else None
        return float(loss) if isinstance(loss, (int, float)) and math.isfinite(loss) else None

    @property
    def failure(self) -> dict | None:
        return self.result.get("failure") if self.outcome == "failed" else None

    @property
    def feasible(self) -> bool:
        """Does the trial meet its study's constraints (``best.feasible``; a study without any: always)?"""
        return feasible(self.result)

    @property
    def rank_facts(self) -> tuple:
        """``(loss, pruned, tid, infeasible)``: what ``best.rank_key`` ranks a trial by."""
        return self.loss, self.outcome == "pruned", self.tid, not feasible(self.result)

    def metric_value(self, name: str) -> float | None:
        """The trial's value of the study's metric ``name`` (``best.metric_value``); None unless ok or pruned."""
        return metric_value(self.result, name, self.loss) if self.outcome in ("ok", "pruned") else None

    @property
    def param_values(self) -> dict:
        """The trial's params: mongotune's ``params``; for stock hyperopt fmin jobs, which have none,
        hyperopt's ``misc.vals`` (each label's value; a ``choice`` shows the index it drew)."""
        if self.params or not isinstance(self.misc, dict) or not isinstance(self.misc.get("vals"), dict):
            return self.params
        return {str(k): v[0] for k, v in self.misc["vals"].items() if isinstance(v, list) and len(v) == 1}


def outcome_of(state: int, result: dict | None) -> Outcome:
    result = result or {}
    if state == QUEUED:
        return "queued"
    if state == RUNNING:
        return "running"
    if state == ERROR:
        return "error"
    if result.get("status") != "ok":
        return "failed"
    return "pruned" if result.get("pruned") else "ok"


def validate_result(result: Any) -> dict:
    """A result ready to store: a bare number becomes ``{"status": "ok", "loss": x}``; an ``ok``
    result must carry a finite loss, else it is turned into a failure (kind ``nan``)."""
    if not isinstance(result, dict):
        result = {"status": "ok", "loss": result}
    result = dict(result)
    result.setdefault("status", "ok")
    if result["status"] == "ok":
        try:
            loss = float(result.get("loss"))
        except (TypeError, ValueError):
            loss = math.nan
        if not math.isfinite(loss):
            result.update(status="fail", failure={
                "kind": "nan", "reason": f"objective returned a non-finite loss ({result.get('loss')!r})"})
        else:
            result["loss"] = loss
    try:
        return Result.model_validate(result).to_doc()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return Result(status="fail", failure=Failure(
            kind="result", reason=f"objective returned an invalid result ({where}: {first.get('msg')})")).to_doc()


def failure_result(kind: str, reason: str, tb: str | None = None) -> dict:
    failure = Failure(kind=kind, reason=reason,
                      traceback="\n".join(tb.rstrip().splitlines()[-TRACEBACK_TAIL_LINES:]) if tb else None)
    return Result(status="fail", failure=failure).to_doc()


# ====================================================================== leases
def new_token() -> str:
    return uuid.uuid4().hex


@dataclass
class Lease:
    """What a worker holds while it runs a trial."""

    id: Any
    tid: int
    exp_key: str
    token: str
    attempt: int
    params: dict = field(default_factory=dict)
    lost: threading.Event = field(default_factory=threading.Event, repr=False)
    booked: datetime.datetime | None = None  # the server's time of the reservation

    @property
    def filter(self) -> dict:
        """The trial this lease was taken for, while the lease holds.

        The token alone names it: a token is a fresh random value per
        reservation, set in the write that makes the trial running, and every
        write that ends the running state (finish, release, expire, requeue)
        clears it in that same write.  So ``{"lease_token": token}`` matches
        exactly what ``{exp_key, tid, state: RUNNING, lease_token}`` matches,
        and the embedded server answers a one-field equality from its index
        after one full-collection probe, where each field of a longer filter
        costs four probes and the filter a scan that parses every stored
        trial: a heartbeat cost 4x more at 1,000 trials (see
        bench/bench_server.py).
        """
        return {"lease_token": self.token}


class _Reachability(pymongo.monitoring.ServerListener):
    """When this process's clients found a server again after losing it (monotonic clock).

    pymongo marks a server unknown when an operation or its monitor cannot
    reach it, and known again once it answers; the first discovery of a
    server is not a return.  Registered for every client this process opens
    after mongotune's store is imported.
    """

    def __init__(self):
        self.known: set = set()  # (topology, address) seen reachable
        self.back_at: dict = {}  # (topology, address) -> when it came back
        self._lock = threading.Lock()

    def opened(self, event) -> None:
        pass

    def closed(self, event) -> None:
        pass

    def description_changed(self, event) -> None:
        key = (event.topology_id, event.server_address)
        if not event.new_description.is_server_type_known:
            return
        with self._lock:
            if key in self.known and not event.previous_description.is_server_type_known:
                self.back_at[key] = time.monotonic()
            self.known.add(key)

    def last_return(self, client) -> float | None:
        """When a server of ``client`` last came back (None: never lost, as far as this process saw)."""
        topology = getattr(getattr(client, "_topology", None), "_topology_id", None)
        with self._lock:
            times = [t for (top, _), t in self.back_at.items() if topology is None or top == topology]
        return max(times) if times else None


_REACHABILITY = _Reachability()
pymongo.monitoring.register(_REACHABILITY)


def server_now(db) -> datetime.datetime:
    """The server's clock (naive UTC), so that expiry is judged on one clock."""
    try:
        t = db.client.admin.command("hello").get("localTime")
    except Exception:  # noqa: BLE001 - a server without localTime
        t = None
    if isinstance(t, datetime.datetime):
        return t.replace(tzinfo=None)
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


@dataclass
class Counts:
    queued: int = 0
    running: int = 0
    ok: int = 0
    failed: int = 0
    pruned: int = 0
    error: int = 0

    @property
    def finished(self) -> int:
        return self.ok + self.failed + self.pruned + self.error

    @property
    def total(self) -> int:
        return self.finished + self.queued + self.running

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("queued", "running", "ok", "failed", "pruned", "error")}


def _candidates(queued: list[dict], spread: int = 3) -> list[dict]:
    """The trials one reservation tries, in order: the oldest, then ``spread`` others at random (many
    workers looking at once all see the same oldest one; only one of them gets it)."""
    rest = queued[1:]
    return queued[:1] + (random.sample(rest, spread) if len(rest) > spread else rest)


_REQUEUED = {"state": QUEUED, "owner": None, "lease_token": None, "book_time": None, "worker": None}


# ====================================================================== the store
class TrialStore:
    """Every transition of, and every query on, the trial documents of one jobs collection."""

    def __init__(self, db, jobs=None):
        self.db = db
        self.jobs = jobs if jobs is not None else db.jobs
        self._reap_failed = False  # the last reap could not reach the server
        self._back_at: float | None = None  # when a reap reached it again (monotonic)

    @classmethod
    def of(cls, handle) -> "TrialStore":
        """The store of a ``MongoJobs`` handle's collection (hyperopt's interface to the same trials)."""
        return cls(handle.db, handle.jobs)

    def hyperopt_jobs(self, gfs=None, retry=None):
        """hyperopt's interface (``MongoJobs``) to this store's collection, for ``MongoTrials`` and fmin."""
        from ._jobs import MongoJobs

        return MongoJobs(self.db, self.jobs, gfs, self.db.client, None, "spec", retry=retry)

    # ------------------------------------------------------------ set-up
    def ensure_indexes(self) -> None:
        self.jobs.create_index([("state", 1), ("exp_key", 1), ("tid", 1)])
        self.jobs.create_index([("exp_key", 1), ("state", 1)])
        self.jobs.create_index([("exp_key", 1), ("tid", 1)])
        self.jobs.create_index("lease_token", sparse=True)
        # the state alone: a reservation's and the coordinator's reads filter on it, and the embedded
        # server reads a one-field equality through a one-field index only (store/embedded_engine.py)
        self.jobs.create_index("state")

    # ------------------------------------------------------------ new trials
    @staticmethod
    def stamp(doc: dict, params: dict) -> dict:
        """mongotune's fields on a new trial document that fmin is about to insert."""
        doc["params"] = params
        doc["attempts"] = 0
        doc["curve"] = []
        return doc

    # ------------------------------------------------------------ reserve
    def reserve(self, worker: dict, exp_keys: Iterable[str], token: str | None = None) -> Lease | None:
        """Take the oldest queued trial of ``exp_keys`` for ``worker`` under lease ``token``.

        Look, then take: a read of the queued trials, then an atomic update of
        one of them (oldest tid first) that is still conditional on it being
        queued, so two workers never take the same trial.  The caller gives a
        fresh token per attempt (see ``Worker._reserve``).  The oldest is tried
        first; when another worker took it, a few others at random (``_candidates``),
        so that hundreds of workers do not all race for the head of the queue.  Both filters are as
        small as that allows: the embedded server probes the whole collection
        for each field of a filter, and answers a sort by decoding every trial.
        """
        keys = list(exp_keys)
        if not keys:
            return None
        token = token or new_token()
        change = {"$set": {"owner": worker["id"], "state": RUNNING, "lease_token": token,
                           "worker": encode(worker)},
                  "$currentDate": {"book_time": True, "refresh_time": True}, "$inc": {"version": 1}}
        for _ in range(3):
            # the queued trials of every study (few), by state alone; study and owner checked here
            queued = sorted((d for d in self.jobs.find({"state": QUEUED}, projection=["tid", "exp_key", "owner"])
                             if d.get("exp_key") in keys and d.get("owner") is None),
                            key=lambda d: (d.get("tid") is not None, d.get("tid") or 0))
            if not queued:
                return None
            for q in _candidates(queued):
                # still queued (a queued trial is always unowned: every write that queues one clears
                # its owner), so two workers never take the same trial
                doc = self.jobs.find_one_and_update(
                    {"_id": q["_id"], "state": QUEUED}, change,
                    projection=["tid", "exp_key", "attempts", "params", "book_time"],
                    return_document=pymongo.ReturnDocument.AFTER)
                if doc is not None:
                    return self._lease(doc, token)
        return None

    def held_by(self, tokens: Iterable[str]) -> Lease | None:
        """The running trial taken under one of ``tokens`` (a reservation whose reply was lost)."""
        tokens = list(tokens)
        if not tokens:
            return None
        doc = self.jobs.find_one({"state": RUNNING, "lease_token": {"$in": tokens}},
                                 projection=["tid", "exp_key", "attempts", "params", "lease_token", "book_time"])
        return self._lease(doc, doc["lease_token"]) if doc else None

    @staticmethod
    def _lease(doc: dict, token: str) -> Lease:
        booked = doc.get("book_time")
        return Lease(doc["_id"], doc["tid"], doc["exp_key"], token, int(doc.get("attempts") or 0) + 1,
                     decode(doc.get("params") or {}), booked=booked if isinstance(booked, datetime.datetime) else None)

    # ------------------------------------------------------------ while running
    def heartbeat(self, lease: Lease, progress: dict | None = None) -> bool:
        """Refresh ``lease`` on the server's clock; False: the lease is no longer held."""
        update: dict = {"$currentDate": {"refresh_time": True}}
        if progress:
            update["$set"] = {"progress": encode(progress)}
        return self.jobs.update_one(lease.filter, update).matched_count == 1

    def report(self, lease: Lease, step: int, value: float, t: float, *, keep=None,
               limit: int = CURVE_MAX_POINTS) -> bool:
        """Append one reading of the study's metric to the trial's curve (once per step and attempt).

        False: the lease is no longer held, or the step was already recorded
        (a retried write whose reply was lost).  Once this run has ``limit``
        points, they are thinned to half as many (``thin_points``; ``keep(step)``
        names steps that stay), so a trial's document stays small.

        A retry sends the very same point (its wall-clock time is the lease's
        booking time plus ``t``), so ``$addToSet`` adds it once; the curve as it
        was before the write tells whether the step was there already.  The
        filter is the lease's token alone: a condition on the curve array
        (``$not``/``$elemMatch``) makes the embedded server decode every trial
        in Python, on every step of every trial.
        """
        base = lease.booked + datetime.timedelta(seconds=float(t)) if lease.booked is not None else None
        at = base or datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        point = CurvePoint(step=int(step), value=float(value), t=round(float(t), 3), attempt=lease.attempt,
                           lease=lease.token[:12], at=at.replace(microsecond=at.microsecond // 1000 * 1000),
                           ).model_dump()
        before = self.jobs.find_one_and_update(
            lease.filter, {"$addToSet": {"curve": encode(point)}, "$currentDate": {"refresh_time": True}},
            projection=["curve"], return_document=pymongo.ReturnDocument.BEFORE)
        added = before is not None and not _has_step(before, point["step"], point["lease"])
        if added and limit:
            curve = [*(before.get("curve") or []), encode(point)]
            mine = [p for p in curve if isinstance(p, dict) and p.get("lease") == point["lease"]]
            if len(mine) >= limit:
                others = [p for p in curve if not (isinstance(p, dict) and p.get("lease") == point["lease"])]
                self.jobs.update_one(lease.filter, {"$set": {"curve": others + thin_points(mine, limit // 2, keep)}})
        return added

    def has_step(self, lease: Lease, step: int) -> bool:
        doc = self.jobs.find_one(lease.filter, projection=["curve"])
        return doc is not None and _has_step(doc, int(step), lease.token[:12])

    # ------------------------------------------------------------ the end of an attempt
    def finish(self, lease: Lease, result: dict, extra: dict | None = None) -> bool:
        """Record a result (ok, failed or pruned) with ``extra`` (the attempt's ``artifacts``, duration,
        worker).  Also taken after the lease expired, as long as nobody has finished the trial yet (first
        finished wins).  Idempotent under retries."""
        fields = {"state": DONE, "result": validate_result(result), "lease_token": None,
                  "finished_lease": lease.token, **(extra or {})}
        # the usual case, the lease still held, by its token alone (cheap on the embedded server);
        # then the whole condition, which also takes a result after the lease expired
        if self.jobs.update_one(lease.filter, _finish_update(fields)).matched_count == 1:
            return True
        if self._finish_late(lease, {"artifacts": None, **fields}):
            return True
        return self.jobs.count_documents({"exp_key": lease.exp_key, "tid": lease.tid,
                                          "finished_lease": lease.token}, limit=1) == 1

    def _finish_late(self, lease: Lease, fields: dict, tries: int = 5) -> bool:
        """First finished wins, after this lease expired: the result goes with this attempt's artifacts
        (``fields``) and this run's points are moved after those of any later run, so the trial's last
        run is the one whose result it keeps.  Each try is conditional on the trial not having changed
        since it was read (``refresh_time``: every heartbeat and curve point changes it)."""
        cond = {"exp_key": lease.exp_key, "tid": lease.tid, "state": {"$in": [QUEUED, RUNNING]},
                "$or": [{"lease_token": lease.token}, {"lease_expiries.token": lease.token}]}
        for _ in range(tries):
            doc = self.jobs.find_one(cond, projection=["curve", "refresh_time"])
            if doc is None:
                return False
            tag = lease.token[:12]
            curve = [p for p in doc.get("curve") or [] if isinstance(p, dict)]
            mine = [p for p in curve if p.get("lease") == tag]
            moved = {}
            if mine and curve[-1] is not mine[-1]:
                moved = {"curve": [p for p in curve if p.get("lease") != tag] + mine}
            update = _finish_update({**fields, **moved})
            if self.jobs.update_one({**cond, "_id": doc["_id"], "refresh_time": doc.get("refresh_time")},
                                    update).matched_count == 1:
                return True
        # the trial keeps changing under us (a busy heartbeat): take the result without moving the curve
        return self.jobs.update_one(cond, _finish_update(fields)).matched_count == 1

    def release(self, lease: Lease, reason: str) -> bool:
        """Put the trial back in the queue at once (graceful shutdown); no attempt is counted."""
        res = self.jobs.update_one(lease.filter, {
            "$set": dict(_REQUEUED), "$push": {"requeues": {"reason": reason, "token": lease.token}},
            "$currentDate": {"refresh_time": True}, "$inc": {"version": 1}})
        if res.matched_count == 1:
            return True
        return self.jobs.count_documents({"exp_key": lease.exp_key, "tid": lease.tid,
                                          "requeues.token": lease.token}, limit=1) == 1

    # ------------------------------------------------------------ checkpoints
    def record_checkpoint(self, lease: Lease, ref: dict) -> tuple[bool, dict | None]:
        """Point the trial at its new complete checkpoint ``ref``: (lease held, the pointer it replaced)."""
        before = self.jobs.find_one_and_update(lease.filter, {"$set": {"checkpoint": encode(ref)}},
                                               projection=["checkpoint"], return_document=pymongo.ReturnDocument.BEFORE)
        return before is not None, decode(before.get("checkpoint")) if before else None

    def checkpoint_of(self, lease: Lease) -> dict | None:
        doc = self.jobs.find_one(lease.filter, projection=["checkpoint"])
        ref = doc.get("checkpoint") if doc else None
        return decode(ref) if isinstance(ref, dict) else None

    def resume_curve(self, lease: Lease, ref: dict) -> bool:
        """The run that wrote checkpoint ``ref`` continues as this lease's: its points up to the checkpoint's
        step are retagged with this lease (each keeps its attempt), so the trial's last run shows each step
        once; its points after the step (epochs this run trains again) stay behind as an earlier run."""
        doc = self.jobs.find_one(lease.filter, projection=["curve"])
        if doc is None:
            return False
        tag, old, step = lease.token[:12], ref.get("lease"), int(ref.get("step") or 0)
        curve = [p for p in doc.get("curve") or [] if isinstance(p, dict)]
        carried = [p.get("lease") == old and isinstance(p.get("step"), int) and p["step"] <= step for p in curve]
        moved = [dict(p, lease=tag) for p, c in zip(curve, carried) if c]
        rest = [p for p, c in zip(curve, carried) if not c and p.get("lease") != tag]
        mine = [p for p in curve if p.get("lease") == tag]
        return self.jobs.update_one(lease.filter, {"$set": {"curve": rest + moved + mine}}).matched_count == 1

    def forget_checkpoint(self, exp_key: str, tid: int, prefix: str) -> bool:
        """Drop the pointer of a finished trial's checkpoint (its objects deleted), if it is still ``prefix``."""
        return self.jobs.update_one({"exp_key": exp_key, "tid": tid, "checkpoint.prefix": prefix},
                                    {"$unset": {"checkpoint": ""}}).matched_count == 1

    def checkpoint_refs(self, exp_key: str) -> dict[int, tuple[int, dict | None]]:
        """Every trial of the study that points at a checkpoint: tid -> (state, pointer)."""
        docs = self.jobs.find({"exp_key": exp_key}, projection=["tid", "state", "checkpoint"])
        return {d["tid"]: (d.get("state"), decode(d["checkpoint"])) for d in docs
                if isinstance(d.get("checkpoint"), dict) and isinstance(d.get("tid"), int)}

    def record_artifacts(self, lease: Lease, host: str, path: str) -> bool:
        ref = ArtifactsRef(host=host, path=path).model_dump()
        return self.jobs.update_one(lease.filter, {"$set": {"artifacts": ref}}).matched_count == 1

    # ------------------------------------------------------------ operators and the reaper
    def requeue(self, exp_key: str, tid: int | None = None, reason: str = "operator") -> list[int]:
        """Put running trials (or the running/errored trial ``tid``) back in the queue."""
        q: dict = {"exp_key": exp_key, "state": RUNNING}
        if tid is not None:
            q = {"exp_key": exp_key, "tid": tid, "state": {"$in": [RUNNING, ERROR]}}
        tids = []
        for doc in self.jobs.find(q, projection=["tid", "lease_token", "state"]):
            res = self.jobs.update_one(
                {"exp_key": exp_key, "tid": doc["tid"], "state": doc["state"], "lease_token": doc.get("lease_token")},
                {"$set": dict(_REQUEUED),
                 "$push": {"requeues": {"reason": reason, "token": doc.get("lease_token")}},
                 "$currentDate": {"refresh_time": True}, "$inc": {"version": 1}})
            if res.matched_count:
                tids.append(doc["tid"])
        return tids

    def expire(self, leases: dict[str, tuple[float, int]]) -> list[tuple[int, str]]:
        """Requeue (or fail, after ``max_attempts``) running trials whose heartbeat is too old.

        ``leases`` maps an ``exp_key`` to ``(lease_seconds, max_attempts)``.
        Safe from many processes at once: each change is conditional on the
        expired token and on the heartbeat still being too old.  Returns
        ``[(tid, "requeued" | "failed")]``.
        """
        done: list[tuple[int, str]] = []
        try:
            now = server_now(self.db) if leases else None
            for doc, (lease_s, max_attempts) in self.stale(leases, now):
                outcome = self.expire_one(doc, lease_s, max_attempts, now)
                if outcome is not None:
                    done.append((doc["tid"], outcome))
        except pymongo.errors.PyMongoError:
            self._reap_failed = True  # the next reap that gets through starts a grace period
            raise
        return done

    def stale(self, leases: dict[str, tuple[float, int]],
              now: datetime.datetime | None = None) -> list[tuple[dict, tuple[float, int]]]:
        """The running trials whose heartbeat is older than their study's lease at ``now`` (the server's
        clock), each with its study's ``(lease_s, max_attempts)``.  None for one lease after this process
        found the server again: every worker was cut off too, and gets a full lease to heartbeat."""
        if not leases:
            return []
        now = now or server_now(self.db)
        # the running trials of every study (few), by state alone; study and age checked here
        running = list(self.jobs.find({"state": RUNNING},
                                      projection=["tid", "exp_key", "lease_token", "attempts", "owner", "refresh_time"]))
        if self._reap_failed:  # this reap is the first to get through again
            self._reap_failed, self._back_at = False, time.monotonic()
        # a return this store saw itself, or one its client's monitor saw (told up to a second late)
        back = max((t for t in (self._back_at, _REACHABILITY.last_return(self.db.client)) if t is not None),
                   default=None)
        since_back = math.inf if back is None else time.monotonic() - back
        out = []
        for exp_key, (lease_s, max_attempts) in leases.items():
            if since_back < lease_s:
                continue
            cutoff = now - datetime.timedelta(seconds=lease_s)
            out += [(d, (lease_s, max_attempts)) for d in running if d.get("exp_key") == exp_key
                    and isinstance(d.get("refresh_time"), datetime.datetime) and d["refresh_time"] < cutoff]
        return out

    def expire_one(self, doc: dict, lease_s: float, max_attempts: int, now: datetime.datetime) -> str | None:
        """Requeue or fail one trial ``stale`` found, if it still holds the same lease and its heartbeat is
        still older than ``now - lease_s``; None when it changed meanwhile (a heartbeat landed)."""
        exp_key, tid = doc["exp_key"], doc["tid"]
        cutoff = now - datetime.timedelta(seconds=lease_s)
        attempts = int(doc.get("attempts") or 0) + 1
        token = doc.get("lease_token")
        age = (now - doc["refresh_time"]).total_seconds()
        note = {"owner": doc.get("owner"), "silent_s": round(age, 1), "attempt": attempts, "token": token}
        cond = (Lease(doc["_id"], tid, exp_key, token, attempts).filter if token else
                {"exp_key": exp_key, "tid": tid, "state": RUNNING, "lease_token": None})
        cond["refresh_time"] = {"$lt": cutoff}
        if attempts >= max_attempts:
            reason = (f"lease expired {attempts} times (no heartbeat for {lease_s:.0f}s); "
                      f"last owner {doc.get('owner')}")
            fields = {"state": DONE, "lease_token": None, "attempts": attempts,
                      "result": failure_result("lease", reason)}
            outcome = "failed"
        else:
            fields = {**_REQUEUED, "attempts": attempts}
            outcome = "requeued"
        res = self.jobs.update_one(cond, {"$set": fields, "$push": {"lease_expiries": note},
                                          "$inc": {"version": 1}, "$currentDate": {"refresh_time": True}})
        if not res.matched_count:
            return None
        log.warning("trial %s of %s: worker %s silent for %.0fs; %s (attempt %d/%d)",
                    tid, exp_key, doc.get("owner"), age, outcome, attempts, max_attempts)
        return outcome

    # ====================================================================== reads
    def counts(self, exp_key: str) -> Counts:
        """How many of the study's trials are in each outcome (``outcome_of``): three counts of the finished, and
        the few queued, running and errored trials read by state."""
        count = self._count
        finished = {"exp_key": exp_key, "state": {"$nin": [QUEUED, RUNNING, ERROR]}}
        # the unfinished and errored trials are few: read by state alone (an index read on either server)
        few = [d for d in self.jobs.find({"state": {"$in": [QUEUED, RUNNING, ERROR]}}, projection=["exp_key", "state"])
               if d.get("exp_key") == exp_key]
        counts = Counts(**{name: sum(1 for d in few if d.get("state") == state)
                           for name, state in (("queued", QUEUED), ("running", RUNNING), ("error", ERROR))})
        status_ok = count({**finished, "result.status": "ok"})
        counts.pruned = count({**finished, "result.status": "ok", "result.pruned": True})
        counts.ok = status_ok - counts.pruned
        counts.failed = count(finished) - status_ok
        return counts

    def _count(self, query: dict) -> int:
        """The documents ``query`` matches, by the ``count`` command: the embedded server answers it in SQL
        (20 ms at 2,000 trials) where ``count_documents``' aggregation decodes every match (520 ms).  Exact
        outside sharded clusters, where it may count orphaned documents; ``count_documents`` where refused."""
        try:
            return int(self.db.command("count", self.jobs.name, query=query)["n"])
        except pymongo.errors.OperationFailure:
            return self.jobs.count_documents(query)

    def summarize(self, docs: Iterable[dict], exp_key: str) -> tuple[Counts, TrialRecord | None, list[TrialRecord]]:
        """``counts``, ``best`` and ``running`` of a study, from its queued, running and finished
        trials as the caller already holds them (the coordinator's view, re-read every poll).

        What launch's progress shows twice a second, without reading the study: on the
        embedded server ``counts`` and ``best`` each decode every trial (~300 ms at 1,000
        trials).  Error trials, which the view leaves out, are read by state alone.
        """
        counts, done, running = Counts(), [], []
        for d in docs:
            if d.get("exp_key") != exp_key:
                continue
            outcome = outcome_of(d.get("state"), d.get("result"))
            setattr(counts, outcome, getattr(counts, outcome) + 1)
            (done if d.get("state") == DONE else running if d.get("state") == RUNNING else []).append(d)
        counts.error += sum(1 for d in self.jobs.find({"state": ERROR}, projection=["exp_key"])
                            if d.get("exp_key") == exp_key)

        def facts(d: dict) -> tuple:
            r = d.get("result") or {}
            return (r.get("loss") if r.get("status") == "ok" else None, bool(r.get("pruned")), d["tid"],
                    not feasible(r))

        best = pick_best(done, facts)
        return (counts, _record(best) if best is not None else None,
                [_record(d) for d in sorted(running, key=lambda d: d["tid"])])

    def count(self, exp_key: str) -> int:
        """Every trial of the study, whatever its state."""
        return self.jobs.count_documents({"exp_key": exp_key})

    def ranked(self, exp_key: str, top: int | None = None, *, include_pruned: bool = False,
               fields: list[str] | None = None) -> list[TrialRecord]:
        """Finished trials with a finite loss, best first (``best.rank_key``: pruned ones after those that
        ran to their end)."""
        q: dict = {"exp_key": exp_key, "state": DONE, "result.status": "ok"}
        if not include_pruned:
            q["result.pruned"] = {"$ne": True}
        if fields is not None:
            fields = sorted(set(fields) | set(_RANK_FIELDS))
        if top is not None:
            return self._top_ranked(q, top, fields)
        return by_rank((_record(doc) for doc in self.jobs.find(q, projection=fields)), lambda r: r.rank_facts)

    def _top_ranked(self, q: dict, top: int, fields: list[str] | None) -> list[TrialRecord]:
        """The ``top`` best trials ``q`` matches, read lowest loss first (ties by tid), stopping once ``top``
        feasible trials that ran to their end are in a prefix of that order: any trial after it ranks after
        them too (``best.rank_key`` puts those first, then by loss and tid).  So the top of a 10,000-trial
        study costs a sorted read of a few documents, not a decode of every one."""
        limit = 2 * top + 20
        while True:  # a limit, not a cursor's batches: the embedded server sorts and decodes the whole match
            seen = [_record(doc) for doc in self.jobs.find(q, projection=fields, sort=[("result.loss", 1), ("tid", 1)],
                                                           limit=limit)]
            leaders = sum(1 for r in seen if (key := rank_key(*r.rank_facts)) is not None and not any(key[:2]))
            if leaders >= top or len(seen) < limit:
                break
            limit *= 4
        return by_rank(seen, lambda r: r.rank_facts)[:top]

    def front(self, exp_key: str, objectives: list[dict]) -> tuple[list[TrialRecord], int]:
        """``(front, infeasible)``: the study's Pareto front (``store.pareto``: the trials that ran to their end,
        meet every constraint and that no other such trial dominates), in trial order, and how many finished
        trials break a constraint."""
        from .pareto import front, losses_of

        q = {"exp_key": exp_key, "state": DONE, "result.status": "ok"}
        rows = [_record(doc) for doc in self.jobs.find(q, projection=["tid", "exp_key", "state", "params", "misc.vals",
                                                                      "result"])]
        rows.sort(key=lambda r: r.tid)
        complete = [r for r in rows if r.outcome == "ok" and r.feasible]
        return front(complete, lambda r: losses_of(r.result, objectives)), sum(1 for r in rows if not r.feasible)

    def best(self, exp_key: str, *, fields: list[str] | None = None) -> TrialRecord | None:
        """The study's best trial (``best.rank_key``: a pruned one only when no trial ran to its end)."""
        rows = self.ranked(exp_key, 1, include_pruned=True, fields=fields)
        return rows[0] if rows else None

    def done_by_worker(self) -> dict[str, int]:
        """How many trials each worker (by id) finished, read from the trials themselves (a worker's own
        counter lags its last heartbeat); a trial failed by lease expiry is nobody's."""
        pipeline = [{"$match": {"state": DONE}},
                    {"$group": {"_id": {"w": "$worker.id", "k": "$result.failure.kind"}, "n": {"$sum": 1}}}]
        done: dict[str, int] = {}
        for row in self.jobs.aggregate(pipeline):
            worker, kind = row["_id"].get("w"), row["_id"].get("k")
            if isinstance(worker, str) and kind != "lease":
                done[worker] = done.get(worker, 0) + row["n"]
        return done

    def span(self, exp_key: str) -> tuple[datetime.datetime | None, datetime.datetime | None, bool]:
        """``(first, last, running)``: when the study's first trial was taken, when its last one ended
        (None: none yet) and whether a trial is running now."""
        def edge(q: dict, field: str, order: int) -> datetime.datetime | None:
            doc = self.jobs.find_one({"exp_key": exp_key, **q, field: {"$type": "date"}}, projection=[field],
                                     sort=[(field, order)])
            return doc.get(field) if doc else None

        first = edge({}, "book_time", 1)
        # a finished trial's end: ``finished``, or its last heartbeat where it has none
        ends = [edge({"state": DONE}, "finished", -1),
                edge({"state": DONE, "finished": {"$not": {"$type": "date"}}}, "refresh_time", -1)]
        ends = [e for e in ends if e is not None]
        running = self.jobs.find_one({"exp_key": exp_key, "state": RUNNING}, projection=["_id"]) is not None
        return first, max(ends) if ends else None, running

    def get(self, exp_key: str, tid: int) -> TrialRecord | None:
        doc = self.jobs.find_one({"exp_key": exp_key, "tid": tid})
        return _record(doc) if doc else None

    def running(self, exp_key: str | None = None) -> list[TrialRecord]:
        docs = [d for d in self.jobs.find({"state": RUNNING}, projection=_RUNNING_FIELDS)  # by state alone: an index read
                if exp_key is None or d.get("exp_key") == exp_key]
        return [_record(d) for d in sorted(docs, key=lambda d: (str(d.get("exp_key")), d.get("tid", -1)))]

    def running_exp_keys(self) -> set[str]:
        return self.exp_keys(RUNNING)

    def exp_keys(self, state: int | None = None) -> set:
        """The exp_keys of the trials in ``state`` (every trial's with None; a stock fmin job's may be None)."""
        if state is None:
            return set(self.jobs.distinct("exp_key"))
        return {d.get("exp_key") for d in self.jobs.find({"state": state}, projection=["exp_key"])}

    def has_exp_key(self, exp_key: str) -> bool:
        return self.jobs.find_one({"exp_key": exp_key}, projection=["_id"]) is not None

    def states(self, exp_key: str) -> list[int]:
        """The state of each trial of ``exp_key`` (one ``find``, no aggregation: the dashboard sends reads only)."""
        return [d.get("state") for d in self.jobs.find({"exp_key": exp_key}, projection=["state"])]

    def size(self) -> int:
        """How many documents the collection holds, from its metadata (cheap; inserts move it)."""
        return self.jobs.estimated_document_count()

    def document(self, lease: Lease) -> dict | None:
        """The whole trial document of ``lease``, decoded (a stock fmin job, which carries its own objective)."""
        doc = self.jobs.find_one({"_id": lease.id})
        return decode(doc) if doc is not None else None

    # ------------------------------------------------------------ the coordinator's view
    def active(self, exp_key: str | None) -> dict[Any, dict]:
        """The queued and running trials of ``exp_key`` (of every study with None), whole, by ``_id``.

        The filter is the state alone and the study is checked here: on the embedded server every
        field of a filter costs full-collection probes after each write."""
        docs = self.jobs.find({"state": {"$in": [QUEUED, RUNNING]}})
        return {d["_id"]: d for d in docs if exp_key is None or d.get("exp_key") == exp_key}

    def busy_workers(self, *, besides: str | None = None) -> set:
        """The ids of the workers that run a trial now (with ``besides``, a trial of another study than that
        exp_key): read from the running trials, which a worker's own document lags by up to one heartbeat."""
        running = self.jobs.find({"state": RUNNING}, projection=["worker.id", "exp_key"])
        return {(d.get("worker") or {}).get("id") for d in running if besides is None or d.get("exp_key") != besides}

    # ------------------------------------------------------------ a pruner's reads
    def finished_curves(self, exp_key: str, since: datetime.datetime | None = None
                        ) -> tuple[list[RunCurve], datetime.datetime | None]:
        """The curves of the study's finished trials (with ``since``, of those written after it: a finished
        trial never changes again), and the newest ``refresh_time`` among them.

        One field per filter (the study and the state are checked here): the embedded server probes the
        whole collection for every field of a filter."""
        query = {"state": DONE} if since is None else {"refresh_time": {"$gt": since}}
        out, newest = [], None
        for doc in self.jobs.find(query, projection=_CURVE_FIELDS):
            if doc.get("exp_key") != exp_key or doc.get("state") != DONE:
                continue
            out.append(_run_curve(doc))
            t = doc.get("refresh_time")
            if isinstance(t, datetime.datetime) and (newest is None or t > newest):
                newest = t
        return out, newest

    def running_curves(self, exp_key: str) -> list[RunCurve]:
        """The curves of the study's running trials as they are now."""
        return [_run_curve(d) for d in self.jobs.find({"state": RUNNING}, projection=_CURVE_FIELDS)
                if d.get("exp_key") == exp_key]

    def records(self, exp_key: str, *, fields: list[str] | None = None, lenient: bool = False) -> list[TrialRecord]:
        """The study's trials in tid order (``changed`` reads only those written since a moment).

        One field per filter and the sort done here: on the embedded server a
        second field or a sort costs probes and scans that parse every stored trial.
        ``lenient``: a document that is not a valid trial is left out (and
        logged) rather than failing the whole read, for readers that show a study.
        """
        return self._read([{"exp_key": exp_key}], exp_key, fields, lenient)

    def changed(self, exp_key: str, since: datetime.datetime, *, queued: bool = True,
                fields: list[str] | None = None, lenient: bool = False) -> list[TrialRecord]:
        """Trials of the study written at or after ``since`` (server clock) and, with ``queued``, its
        queued trials, in tid order: reads of one field each.  Every write to a trial after its insert
        sets ``refresh_time`` (requeues and releases too); only a new trial has none, so a caller that
        knows nothing was inserted can leave the queued ones out."""
        queries: list[dict] = [{"refresh_time": {"$gte": since}}]
        if queued:
            queries.append({"state": QUEUED})
        return self._read(queries, exp_key, fields, lenient)

    def _read(self, queries: list[dict], exp_key: str, fields: list[str] | None, lenient: bool) -> list[TrialRecord]:
        if fields is not None:
            fields = list(dict.fromkeys([*fields, "tid", "exp_key", "state"]))
        seen: dict[Any, TrialRecord] = {}
        for q in queries:
            for doc in self.jobs.find(q, projection=fields):
                if doc.get("exp_key") != exp_key or doc["_id"] in seen:
                    continue
                try:
                    seen[doc["_id"]] = _record(doc)
                except ValidationError as exc:
                    if not lenient:
                        raise
                    log.warning("trial %s of %s is not a valid trial document, left out: %s",
                                doc.get("tid"), exp_key, exc.errors()[0].get("msg"))
        return sorted(seen.values(), key=lambda r: r.tid)


_RUNNING_FIELDS = ["tid", "exp_key", "state", "worker", "book_time", "refresh_time", "progress", "attempts",
                   "params", "curve", "artifacts"]
_CURVE_FIELDS = ["tid", "exp_key", "state", "curve", "refresh_time", "result.pruned"]


@dataclass
class RunCurve:
    """One trial's curve as a pruner reads it: the points of its latest run (plain dicts: step, value, ...)."""

    tid: int
    points: list[dict]
    finished: bool
    pruned: bool


def latest_run(points: list[dict]) -> list[dict]:
    """The points of a trial's latest run (a trial run again starts its curve again; earlier runs stay)."""
    if not points:
        return []
    latest = points[-1].get("lease", "")
    return [p for p in points if p.get("lease", "") == latest]


def _run_curve(doc: dict) -> RunCurve:
    return RunCurve(doc["tid"], latest_run(decode(doc.get("curve") or [])), doc.get("state") == DONE,
                    bool((doc.get("result") or {}).get("pruned")))


def _finish_update(fields: dict) -> dict:
    return {"$set": encode(fields), "$currentDate": {"refresh_time": True, "finished": True}, "$inc": {"version": 1}}


def thin_points(points: list[dict], n: int, keep=None) -> list[dict]:
    """About ``n`` of one run's ``points`` (in order), spread evenly over its steps: the first point of each of
    ``n`` equal step ranges, the last point, and every point whose step ``keep(step)`` names."""
    if len(points) <= n or n < 2:
        return points
    lo, hi = points[0].get("step", 0), points[-1].get("step", 0)
    width = (hi - lo) / (n - 1) if hi > lo else 0
    chosen, seen = {0, len(points) - 1}, set()
    for i, p in enumerate(points):
        step = p.get("step", 0)
        rung = int((step - lo) / width) if width else i * n // len(points)
        if rung not in seen:
            seen.add(rung)
            chosen.add(i)
        if keep is not None and keep(step):
            chosen.add(i)
    return [points[i] for i in sorted(chosen)]


def _has_step(doc: dict, step: int, lease: str) -> bool:
    return any(isinstance(p, dict) and p.get("step") == step and p.get("lease") == lease for p in doc.get("curve") or [])


# what ``TrialRecord.rank_facts`` reads
_RANK_FIELDS = ("tid", "exp_key", "state", "result.status", "result.loss", "result.pruned", "result.constraints")


def _record(doc: dict) -> TrialRecord:
    return TrialRecord.model_validate(decode(doc))
