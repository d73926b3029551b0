"""Ranked trials of a study."""

from __future__ import annotations

import math

from hyperopt.base import JOB_STATE_DONE

from ..store import decode, open_client
from ..store.studies import StudyStore


def leaderboard(url: str, name: str, top: int = 10) -> list[dict]:
    client, db, parsed = open_client(url)
    try:
        study = StudyStore(db).get(name)
        rows = []
        for doc in db[parsed.collection].find({"exp_key": study.exp_key, "state": JOB_STATE_DONE,
                                               "result.status": "ok"}):
            doc = decode(doc)
            r = doc["result"]
            loss = r.get("loss")
            if not isinstance(loss, (int, float)) or not math.isfinite(loss):
                continue
            rows.append({"tid": doc["tid"], "loss": loss, "params": doc.get("params"),
                         "val_accuracy": r.get("val_accuracy"), "epochs": r.get("epochs"),
                         "seconds_per_epoch": r.get("seconds_per_epoch"), "result": r})
        rows.sort(key=lambda r: r["loss"])
        return rows[:top]
    finally:
        client.close()
