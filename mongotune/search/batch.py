"""Asking a suggest function for several trials at once, each seeing the ones suggested before it."""

from __future__ import annotations

from hyperopt import anneal


class PendingView:
    """``trials`` plus suggestions not inserted yet, as the algorithms read them."""

    def __init__(self, trials, pending: list):
        self._trials = trials
        self._pending = pending

    @property
    def trials(self):
        return list(self._trials.trials) + self._pending

    def __len__(self):
        return len(self._trials.trials) + len(self._pending)

    def new_trial_docs(self, *args, **kwargs):
        return self._trials.new_trial_docs(*args, **kwargs)


def fill_batch(algo):
    """Make ``algo`` return one trial for every new id it is given.

    The elastic queue asks for several trials at once (all the idle workers'),
    but hyperopt's ``tpe.suggest`` returns only the first and ``anneal.suggest``
    refuses more than one id.  The rest are suggested one at a time, each
    seeing the earlier ones as pending (loss unknown), just as fmin's own loop
    would after inserting them, but without a database round trip per trial.
    An algorithm that returns nothing (an exhausted grid) ends the batch.
    """

    def suggest(new_ids, domain, trials, seed):
        new_ids = list(new_ids)
        single = algo is anneal.suggest or getattr(algo, "func", None) is anneal.suggest
        docs = [] if single and len(new_ids) > 1 else list(algo(new_ids, domain, trials, seed))
        for i, new_id in enumerate(new_ids[len(docs):], start=len(docs)):
            got = algo([new_id], domain, PendingView(trials, docs) if docs else trials, (seed + i) % (2**31 - 1))
            if not got:
                break
            docs.extend(got)
        return docs

    return suggest
