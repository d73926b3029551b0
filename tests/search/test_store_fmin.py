"""Each search algorithm under stock hyperopt.fmin with mongotune's MongoTrials on the real embedded server.

fmin queues trials in the database (several at once: ``max_queue_len=3``, so
algorithms see queued trials of their own); a hyperopt-style ``MongoWorker``
thread reserves and evaluates them, as in tests/store/test_stock_fmin.py.
"""

from __future__ import annotations

import statistics

import pytest
from hyperopt import hp
from hyperopt.base import JOB_STATE_DONE
from hyperopt.pyll import scope

from mongotune.search.algorithms import make_suggest
from mongotune.search.dims import assignment_of, point_key

from helpers import fmin_with_thread_worker
from search_cases import check_consistent, mixed_loss, mixed_space

pytestmark = pytest.mark.timeout(300)


def grid_loss(p):
    return {"relu": 0.0, "tanh": 1.0, "elu": 2.0}[p["act"]] + p["layers"]


def _fmin_with_worker(mongo_url, tmp_path, fn, space, algo, max_evals):
    best, trials, n_run = fmin_with_thread_worker(mongo_url, tmp_path, fn, space, algo, max_evals)
    trials.refresh()
    return trials, best, n_run


def test_grid_on_the_store_runs_six_distinct_points_and_stops_before_max_evals(mongo_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = {"act": hp.choice("act", ["relu", "tanh", "elu"]), "layers": scope.int(hp.quniform("layers", 1, 2, 1))}
    trials, best, n_run = _fmin_with_worker(mongo_url, tmp_path, grid_loss, space, make_suggest("grid", space=space),
                                            max_evals=20)
    assert n_run == 6 and len(trials.trials) == 6
    assert all(t["state"] == JOB_STATE_DONE for t in trials.trials)
    assert len({point_key(assignment_of(t)) for t in trials.trials}) == 6
    assert sorted(trials.losses()) == [1.0, 2.0, 2.0, 3.0, 3.0, 4.0]
    assert best == {"act": 0, "layers": 1.0}


@pytest.mark.parametrize("name,options,max_evals", [
    ("optuna-tpe", {"startup_trials": 8}, 24),
    ("tpe", {"startup_trials": 8}, 24),
    ("tpe", {"startup_trials": 8, "constant_liar": False}, 12),
    ("gp", {"startup_trials": 8}, 24),
    ("gp", {"acquisition": "ucb", "kappa": 1.5, "startup_trials": 8}, 16),
    ("rand", {}, 9),
    ("anneal", {}, 9),
], ids=["optuna-tpe", "tpe", "tpe-noliar", "gp-ei", "gp-ucb", "rand", "anneal"])
def test_algorithm_on_the_store_with_a_conditional_mixed_space(mongo_url, tmp_path, monkeypatch, name, options,
                                                               max_evals):
    monkeypatch.chdir(tmp_path)
    trials, best, n_run = _fmin_with_worker(mongo_url, tmp_path, mixed_loss, mixed_space(),
                                            make_suggest(name, options), max_evals)
    docs = trials.trials
    assert n_run == max_evals and len(docs) == max_evals
    assert len({t["tid"] for t in docs}) == max_evals
    for doc in docs:
        assert doc["state"] == JOB_STATE_DONE
        check_consistent(doc)
    losses = trials.losses()
    best_doc = min(docs, key=lambda t: t["result"]["loss"])
    assert best == assignment_of(best_doc)  # fmin's argmin comes back through the store
    if name in ("optuna-tpe", "tpe", "gp") and max_evals > 16:
        # the model concentrates its proposals where the random start did well: the typical
        # model-phase loss is below the typical random one (the single best of 8 random draws can
        # be lucky, so the best alone is no test of the model)
        assert statistics.median(losses[8:]) < statistics.median(losses[:8]), losses
    if name in ("gp", "optuna-tpe"):  # neither proposes a point twice
        assert len({point_key(assignment_of(t)) for t in docs}) == max_evals
