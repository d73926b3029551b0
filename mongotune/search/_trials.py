"""Reading a hyperopt ``trials`` object the way the search algorithms need it."""

from __future__ import annotations

import math

import numpy as np
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_NEW, JOB_STATE_RUNNING

PENDING_STATES = (JOB_STATE_NEW, JOB_STATE_RUNNING)


class TrialsView:
    """A stand-in for ``trials`` that shows hyperopt's algorithms a chosen list of documents.

    New documents are still made by the real ``trials`` (``new_trial_docs``
    stamps its ``exp_key``), so what an algorithm returns through a view can be
    inserted into the real one.
    """

    def __init__(self, trials, docs):
        self._base = trials
        self._docs = list(docs)

    @property
    def trials(self):
        return self._docs

    def __len__(self):
        return len(self._docs)

    def __iter__(self):
        return iter(self._docs)

    def new_trial_docs(self, *args, **kwargs):
        return self._base.new_trial_docs(*args, **kwargs)


def is_pending(doc: dict) -> bool:
    """Queued or running: its loss is not known yet."""
    return doc.get("state") in PENDING_STATES


def finite_loss(doc: dict) -> float | None:
    """The loss of a finished, successful trial, or None (pending, failed, NaN/inf, missing)."""
    if doc.get("state") != JOB_STATE_DONE:
        return None
    result = doc.get("result") or {}
    if result.get("status") != "ok":
        return None
    loss = result.get("loss")
    try:
        loss = float(loss)
    except (TypeError, ValueError):
        return None
    return loss if math.isfinite(loss) else None


def seeds_for(seed: int, n: int) -> list[int]:
    """``n`` independent seeds from fmin's one seed (one per new trial id)."""
    if n == 1:
        return [int(seed)]
    return [int(s) for s in np.random.default_rng(int(seed)).integers(2**31 - 1, size=n)]


def one_at_a_time(suggest_one, new_ids, domain, trials, seed):
    """Call a one-id ``suggest_one(new_id, domain, trials_view, seed)`` for every new id.

    Each call sees the trials suggested before it in this batch as queued
    (state NEW, no loss), exactly as it would after fmin had inserted them.
    Stops early (fewer docs than ids) when ``suggest_one`` has nothing left.
    """
    new_ids = list(new_ids)
    docs: list = []
    for new_id, s in zip(new_ids, seeds_for(seed, len(new_ids))):
        view = TrialsView(trials, list(trials.trials) + docs) if docs else trials
        got = list(suggest_one(new_id, domain, view, s))
        if not got:
            break
        docs.extend(got)
    return docs
