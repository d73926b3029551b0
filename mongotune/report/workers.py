"""The worker registry as operators see it (``mongotune workers``)."""

from __future__ import annotations

from ..pool.coordinator import WORKER_LIVE_S
from ..store.trialdoc import server_now
from ..store import open_client


def list_workers(url: str, include_gone: bool = False) -> list[dict]:
    client, db, _ = open_client(url)
    try:
        now = server_now(db)
        rows = []
        for w in db.workers.find().sort("started", 1):
            age = (now - w["heartbeat"]).total_seconds() if w.get("heartbeat") else None
            if w.get("status") == "stopped":
                state = "stopped"
            elif age is None or age > WORKER_LIVE_S:
                state = "lost"
            else:
                state = w.get("status", "idle")
            if state in ("stopped", "lost") and not include_gone:
                continue
            rows.append({**w, "state": state, "heartbeat_age_s": age})
        return rows
    finally:
        client.close()
