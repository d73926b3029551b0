"""Leases on running trials: heartbeats, expiry, requeue.

A worker that reserves a trial stamps it with a fresh ``lease_token`` and
keeps ``refresh_time`` (hyperopt's own "last checked in" field) current from
a background thread, using the *server's* clock (``$currentDate``) so hosts
with skewed clocks agree.  Every later write by that worker is conditional
on its token: once a lease has been taken over, a late result from the old
worker matches nothing and is dropped.

Whoever notices first (any worker, or the coordinator while ``fmin`` polls)
requeues trials whose heartbeat is older than the study's lease; after
``max_attempts`` expired leases the trial is failed with the reason.
"""

from __future__ import annotations

import datetime
import logging
import uuid

from hyperopt.base import JOB_STATE_DONE, JOB_STATE_NEW, JOB_STATE_RUNNING

from ._codec import encode

log = logging.getLogger("mongotune.leases")

DEFAULT_LEASE_S = 60.0
DEFAULT_MAX_ATTEMPTS = 3


def new_token() -> str:
    return uuid.uuid4().hex


def lease_filter(token: str | None, job_id=None) -> dict:
    """The running trial that holds lease ``token``.

    A token is a fresh random value per reservation, so it names one trial
    by itself; filtering on it (indexed) rather than on ``_id`` + token also
    keeps the embedded server on its SQL path (it scans and decodes every
    document for a filter that combines ``_id`` with other fields).  A
    running trial without a token (reserved by a stock hyperopt worker) is
    named by its ``_id``.
    """
    if token is None:
        return {"_id": job_id, "state": JOB_STATE_RUNNING, "lease_token": None}
    return {"lease_token": token, "state": JOB_STATE_RUNNING}


def server_now(db) -> datetime.datetime:
    """The server's clock (naive UTC), so that expiry is judged on one clock."""
    try:
        t = db.client.admin.command("hello").get("localTime")
    except Exception:  # noqa: BLE001 - any server without localTime
        t = None
    if isinstance(t, datetime.datetime):
        return t.replace(tzinfo=None)
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def heartbeat(jobs, job_id, token: str, extra: dict | None = None) -> bool:
    """Refresh a lease; False means the lease is no longer ours."""
    update = {"$currentDate": {"refresh_time": True}}
    if extra:
        update["$set"] = encode(extra)
    res = jobs.update_one(lease_filter(token, job_id), update)
    return res.matched_count == 1


def finish(jobs, job_id, token: str, result: dict, extra: dict | None = None) -> bool:
    """Record a trial's result (ok or fail) if the lease is still ours."""
    fields = {"state": JOB_STATE_DONE, "result": result, "lease_token": None}
    fields.update(extra or {})
    res = jobs.update_one(
        lease_filter(token, job_id),
        {"$set": encode(fields), "$currentDate": {"refresh_time": True}, "$inc": {"version": 1}},
    )
    return res.matched_count == 1


def release(jobs, job_id, token: str, reason: str) -> bool:
    """Give a trial back to the queue at once (graceful shutdown); no attempt is counted."""
    res = jobs.update_one(
        lease_filter(token, job_id),
        {
            "$set": {"state": JOB_STATE_NEW, "owner": None, "lease_token": None, "book_time": None,
                     "worker": None},
            "$push": {"requeues": {"reason": reason, "token": token}},
            "$currentDate": {"refresh_time": True},
            "$inc": {"version": 1},
        },
    )
    return res.matched_count == 1


def requeue_expired(db, jobs, leases: dict[str, tuple[float, int]]) -> list[tuple[int, str]]:
    """Requeue (or fail) running trials whose heartbeat is too old.

    ``leases`` maps an ``exp_key`` to ``(lease_seconds, max_attempts)``.
    Returns ``[(tid, "requeued" | "failed")]``.  Safe to run from many
    processes at once: each change is conditional on the expired token.
    """
    if not leases:
        return []
    now = server_now(db)
    done = []
    for exp_key, (lease_s, max_attempts) in leases.items():
        cutoff = now - datetime.timedelta(seconds=lease_s)
        stale = jobs.find(
            {"exp_key": exp_key, "state": JOB_STATE_RUNNING, "refresh_time": {"$lt": cutoff}},
            projection=["tid", "lease_token", "attempts", "owner", "refresh_time"],
        )
        for doc in stale:
            attempts = int(doc.get("attempts") or 0) + 1
            token = doc.get("lease_token")
            age = (now - doc["refresh_time"]).total_seconds() if doc.get("refresh_time") else float("inf")
            note = {"owner": doc.get("owner"), "silent_s": round(age, 1), "attempt": attempts}
            cond = lease_filter(token, doc["_id"])
            if attempts >= max_attempts:
                reason = (f"lease expired {attempts} times (no heartbeat for {lease_s:.0f}s); "
                          f"last owner {doc.get('owner')}")
                res = jobs.update_one(cond, {
                    "$set": {"state": JOB_STATE_DONE, "lease_token": None, "attempts": attempts,
                             "result": {"status": "fail", "failure": {"kind": "lease", "reason": reason}}},
                    "$push": {"lease_expiries": note}, "$inc": {"version": 1},
                    "$currentDate": {"refresh_time": True},
                })
                outcome = "failed"
            else:
                res = jobs.update_one(cond, {
                    "$set": {"state": JOB_STATE_NEW, "owner": None, "lease_token": None, "book_time": None,
                             "worker": None, "attempts": attempts},
                    "$push": {"lease_expiries": note}, "$inc": {"version": 1},
                    "$currentDate": {"refresh_time": True},
                })
                outcome = "requeued"
            if res.matched_count:
                log.warning("trial %s of %s: worker %s silent for %.0fs; %s (attempt %d/%d)",
                            doc.get("tid"), exp_key, doc.get("owner"), age, outcome, attempts, max_attempts)
                done.append((doc.get("tid"), outcome))
    return done
