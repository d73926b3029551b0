"""The worker registry as operators see it (``mongotune workers``)."""

from __future__ import annotations

from ..store import open_client
from ..store.workers import WorkerRegistry


def list_workers(url: str, include_gone: bool = False) -> list[dict]:
    client, db, _ = open_client(url)
    try:
        return WorkerRegistry(db).listing(include_gone)
    finally:
        client.close()
