"""The worker registry as operators see it (``mongotune workers``)."""

from __future__ import annotations

from ..store import open_client
from ..store.trialdoc import TrialStore
from ..store.workers import WorkerRegistry


def list_workers(url: str, include_gone: bool = False) -> list[dict]:
    """Every live worker (with ``include_gone``, stopped and lost ones too); ``trials_done`` counts the
    trials each one finished, read from the trials."""
    client, db, parsed = open_client(url)
    try:
        done = TrialStore(db, db[parsed.collection]).done_by_worker()
        return WorkerRegistry(db).listing(include_gone, done=done)
    finally:
        client.close()
