"""The worker registry: one heartbeat document per worker process in ``db.workers``.

Workers register when they start, heartbeat from their lease thread, say
what they are running, and mark themselves stopped when they leave.  A
worker that vanished (kill -9, a lost host) stops heart-beating: it is
"lost" after ``LIVE_S`` seconds and its document is deleted after
``FORGET_S`` (by a TTL index on a real MongoDB, and by ``forget_dead``,
which workers and coordinators run now and then, everywhere).
"""

from __future__ import annotations

import datetime

from .trialdoc import server_now

LIVE_S = 20.0  # a worker silent for longer is not counted as live
FORGET_S = 24 * 3600.0  # a stopped or lost worker's document is deleted after this long
RECENT_S = 300.0  # the views list a stopped or lost worker for this long


class WorkerRegistry:
    def __init__(self, db):
        self.db = db
        self.coll = db.workers

    def ensure_indexes(self) -> None:
        self.coll.create_index("heartbeat", expireAfterSeconds=int(FORGET_S))

    def register(self, info: dict) -> None:
        doc = {**info, "status": "idle", "current": None, "trials_done": 0}
        self.coll.replace_one({"_id": info["_id"]}, doc, upsert=True)
        self.coll.update_one({"_id": info["_id"]}, {"$currentDate": {"heartbeat": True, "started": True}})

    def beat(self, worker_id: str, status: str, current: dict | None, trials_done: int,
             extra: dict | None = None) -> None:
        fields = {"status": status, "current": current, "trials_done": trials_done, **(extra or {})}
        self.coll.update_one({"_id": worker_id}, {"$set": fields, "$currentDate": {"heartbeat": True}})

    def stopped(self, worker_id: str, reason: str) -> None:
        self.coll.update_one({"_id": worker_id}, {"$set": {"status": "stopped", "current": None, "exit": reason},
                                                  "$currentDate": {"stopped": True, "heartbeat": True}})

    def live(self, exp_key: str | None = None, now: datetime.datetime | None = None) -> list[dict]:
        """Workers whose heartbeat is recent, optionally only those that serve study ``exp_key``."""
        now = now or server_now(self.db)
        rows = list(self.coll.find({"heartbeat": {"$gte": now - datetime.timedelta(seconds=LIVE_S)},
                                    "status": {"$ne": "stopped"}}))
        if exp_key is not None:
            rows = [w for w in rows if w.get("exp_key") in (None, exp_key)]
        return rows

    def listing(self, include_gone: bool = False, *, seen_within_s: float | None = None,
                done: dict[str, int] | None = None, now: datetime.datetime | None = None) -> list[dict]:
        """Every worker with its ``state`` (idle, running, stopping, stopped, lost) and heartbeat age, oldest
        first.  Stopped and lost ones are listed with ``include_gone``, or when heard from in the last
        ``seen_within_s`` seconds.  ``done`` (``TrialStore.done_by_worker``): the trials each worker
        finished, which replace its own counter (sent with its heartbeats, so behind by up to one)."""
        now = now or server_now(self.db)
        rows = []
        for w in self.coll.find().sort("started", 1):
            age = (now - w["heartbeat"]).total_seconds() if isinstance(w.get("heartbeat"), datetime.datetime) else None
            if w.get("status") == "stopped":
                state = "stopped"
            elif age is None or age > LIVE_S:
                state = "lost"
            else:
                state = w.get("status", "idle")
            recent = seen_within_s is not None and age is not None and age <= seen_within_s
            if state in ("stopped", "lost") and not include_gone and not recent:
                continue
            if done is not None:
                w["trials_done"] = done.get(str(w["_id"]), 0)
            rows.append({**w, "state": state, "heartbeat_age_s": age})
        return rows

    def recent(self, within_s: float = RECENT_S, *, done: dict[str, int] | None = None,
               now: datetime.datetime | None = None) -> list[dict]:
        """The views' list (the dashboard's): the workers of ``listing`` heard from in the last ``within_s``
        seconds, each as ``brief`` shows it."""
        return [brief(w) for w in self.listing(seen_within_s=within_s, done=done, now=now)]

    def forget_dead(self, older_than_s: float = FORGET_S) -> int:
        cutoff = server_now(self.db) - datetime.timedelta(seconds=older_than_s)
        return self.coll.delete_many({"heartbeat": {"$lt": cutoff}}).deleted_count


def brief(w: dict) -> dict:
    """A worker of ``listing`` with the fields the views show (its id as text, its heartbeat age to 0.1 s)."""
    age = w.get("heartbeat_age_s")
    return {"id": str(w["_id"]), "host": w.get("host"), "pid": w.get("pid"), "gpu": w.get("gpu"),
            "study": w.get("study"), "state": w["state"], "current": w.get("current"),
            "trials_done": w.get("trials_done"), "heartbeat_age_s": None if age is None else round(age, 1)}
