"""Ranked trials of a study (``mongotune leaderboard``)."""

from __future__ import annotations

from ..store import open_client
from ..store.studies import StudyStore
from ..store.trialdoc import TrialStore


def leaderboard(url: str, name: str, top: int = 10, *, include_pruned: bool = False) -> tuple[dict, list[dict]]:
    """``(summary, rows)``: the study's metric and trial counts, and its best trials, best first.

    Each row holds the trial's loss, the study metric's value read from the
    trial's result (never derived from the loss), epochs, seconds per epoch
    and params; pruned trials are left out unless ``include_pruned``.
    """
    client, db, parsed = open_client(url)
    try:
        study = StudyStore(db).get(name)
        trials = TrialStore(db, db[parsed.collection])
        metric = study.metric.get("name")
        rows = []
        for rec in trials.ranked(study.exp_key, top, include_pruned=include_pruned):
            r = rec.result
            rows.append({"tid": rec.tid, "loss": rec.loss, "metric": r.get(metric), "outcome": rec.outcome,
                         "pruned_at": r.get("pruned_at"), "epochs": r.get("epochs"),
                         "seconds_per_epoch": r.get("seconds_per_epoch"), "params": rec.params})
        counts = trials.counts(study.exp_key)
        return {"study": name, "metric": study.metric, "counts": counts.as_dict()}, rows
    finally:
        client.close()
