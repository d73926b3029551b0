"""The search algorithms under stock hyperopt.fmin with in-memory Trials, and their option checks."""

from __future__ import annotations

import functools
import itertools
import math
import statistics

import numpy as np
import pytest
from hyperopt import Trials, fmin, hp, rand, space_eval
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_NEW, Domain
from hyperopt.pyll import scope

from mongotune.errors import ConfigError
from mongotune.search import gp, grid, tpe
from mongotune.search.algorithms import ALGORITHMS, from_search, make_suggest
from mongotune.search.dims import assignment_of, dimensions, new_docs, point_key

from search_cases import check_consistent, mixed_loss, mixed_space

pytestmark = pytest.mark.timeout(300)


def _run(algo, space, fn, max_evals, seed, **kwargs):
    trials = Trials()
    fmin(fn, space, algo=algo, max_evals=max_evals, trials=trials, rstate=np.random.default_rng(seed),
         show_progressbar=False, **kwargs)
    return trials


# ---------------------------------------------------------------- grid
def _six_point_space():
    return {"act": hp.choice("act", ["relu", "tanh", "elu"]), "layers": scope.int(hp.quniform("layers", 1, 2, 1))}


def test_grid_runs_every_point_once_then_fmin_stops_early():
    seen = []
    trials = _run(make_suggest("grid"), _six_point_space(), lambda p: seen.append(p) or 0.0, 50, 0)
    assert len(trials.trials) == 6 and len(seen) == 6
    expected = {(a, n) for a in ("relu", "tanh", "elu") for n in (1, 2)}
    assert {(p["act"], p["layers"]) for p in seen} == expected
    assert grid.grid_size(_six_point_space()) == 6


def test_grid_order_is_fixed_and_ignores_the_seed():
    runs = [[(p["act"], p["layers"]) for p in _points_of(_run(make_suggest("grid"), _six_point_space(),
                                                                 lambda p: 0.0, 6, seed))] for seed in (1, 2)]
    assert runs[0] == runs[1]
    assert runs[0][:2] == [("relu", 1), ("relu", 2)]  # the first choice varies slowest


def _points_of(trials):
    space = _six_point_space()
    return [space_eval(space, {k: v[0] for k, v in t["misc"]["vals"].items() if v}) for t in trials.trials]


def test_grid_walks_nested_choices_as_a_tree():
    space = {"x": hp.quniform("x", 0, 2, 1),  # 3 values
             "model": hp.choice("model", [
                 {"kind": "linear"},  # no dimensions: 1 point per x
                 {"kind": "mlp", "act": hp.choice("act", ["relu", "tanh"]),  # 2 ...
                  "reg": hp.choice("reg", [None, {"l2": hp.loguniform("l2", math.log(1e-4), math.log(1e-2))}])}])}
    # x * (1 + act * (1 + l2 values))
    assert grid.grid_size(space, grid_points=3) == 3 * (1 + 2 * (1 + 3))
    trials = _run(make_suggest("grid", {"grid_points": 3}, space=space), space, lambda p: 0.0, 1000, 0,
                  max_queue_len=4)
    docs = trials.trials
    assert len(docs) == 27 and len({point_key(assignment_of(d)) for d in docs}) == 27
    for d in docs:
        vals = d["misc"]["vals"]
        mlp = vals["model"] == [1]
        assert len(vals["act"]) == len(vals["reg"]) == int(mlp)
        assert len(vals["l2"]) == int(mlp and vals["reg"] == [1])
    l2s = sorted({d["misc"]["vals"]["l2"][0] for d in docs if d["misc"]["vals"]["l2"]})
    assert l2s == pytest.approx([1e-4, 1e-3, 1e-2])  # evenly spaced in log space, ends included


def test_grid_without_grid_points_on_a_continuous_dimension_is_a_config_error():
    space = {"lr": hp.loguniform("lr", -5, 0), "act": hp.choice("act", ["a", "b"])}
    with pytest.raises(ConfigError, match=r"'lr' is a continuous dimension .*grid_points"):
        make_suggest("grid", {}, space=space)
    with pytest.raises(ConfigError, match="grid_points"):
        grid.grid_size(space)
    with pytest.raises(ConfigError, match="grid_points"):  # stock fmin without the early check
        _run(make_suggest("grid"), space, lambda p: 0.0, 5, 0)
    assert grid.grid_size(space, grid_points=4) == 8


def test_grid_never_repeats_a_point_already_queued_running_or_done():
    space = _six_point_space()
    domain = Domain(lambda p: 0.0, space)
    trials = Trials()
    # a done trial at the grid's first point, put there by another algorithm
    first = {"act": 0, "layers": 1.0}
    done = new_docs(trials, domain, 0, first)
    done[0].update(state=JOB_STATE_DONE, result={"status": "ok", "loss": 1.0})
    trials.insert_trial_docs(done)
    trials.refresh()
    # then one id at a time, the earlier suggestions left queued (state NEW, status "new")
    got = []
    for tid in range(1, 10):
        docs = grid.suggest([tid], domain, trials, seed=tid)
        if not docs:
            break
        assert docs[0]["state"] == JOB_STATE_NEW and docs[0]["result"]["status"] == "new"
        trials.insert_trial_docs(docs)
        trials.refresh()
        got.append(point_key(assignment_of(docs[0])))
    assert len(got) == 5 and point_key(first) not in got and len(set(got)) == 5
    assert grid.suggest([20, 21], domain, trials, seed=0) == []


def test_grid_batch_of_ids_returns_what_is_left():
    domain = Domain(lambda p: 0.0, _six_point_space())
    trials = Trials()
    docs = grid.suggest(list(range(4)), domain, trials, seed=0)
    assert [d["tid"] for d in docs] == [0, 1, 2, 3]
    trials.insert_trial_docs(docs)
    trials.refresh()
    rest = grid.suggest(list(range(4, 8)), domain, trials, seed=0)
    assert [d["tid"] for d in rest] == [4, 5]


# ---------------------------------------------------------------- tpe / gp / anneal / rand on a mixed space
@pytest.mark.parametrize("name,options", [
    ("optuna-tpe", {}),
    ("optuna-tpe", {"group": False, "dedupe": False}),
    ("tpe", {"startup_trials": 10}),
    ("gp", {}),
    ("gp", {"acquisition": "ucb", "kappa": 2.0}),
], ids=["optuna-tpe", "optuna-tpe-ungrouped", "tpe", "gp-ei", "gp-ucb"])
def test_model_based_search_finds_the_optimum_region_of_a_conditional_mixed_space(name, options):
    bests = []
    for seed in range(5 if "tpe" in name else 3):  # TPE varies more from seed to seed
        trials = _run(make_suggest(name, options), mixed_space(), mixed_loss, 60, seed, max_queue_len=2)
        assert len(trials.trials) == 60
        for doc in trials.trials:
            check_consistent(doc)
        bests.append(min(trials.losses()))
    # random search, same seeds and budget: median 0.66 (0.09 .. 0.85)
    assert statistics.median(bests) < 0.45 and min(bests) < 0.25, bests


@pytest.mark.parametrize("name", ["rand", "anneal"])
def test_hyperopt_algorithms_through_the_registry_take_batches(name):
    trials = _run(make_suggest(name), mixed_space(), mixed_loss, 12, 0, max_queue_len=4)
    assert len(trials.trials) == 12
    for doc in trials.trials:
        check_consistent(doc)


def test_gp_ignores_failed_trials_and_pending_trials_get_distinct_points():
    def fn(p):  # fails on a region: the model must not see NaN or crash
        if p["lr"] > 0.3:
            return {"status": "fail"}
        return {"status": "ok", "loss": mixed_loss(p)}

    trials = _run(make_suggest("gp", {"startup_trials": 6}), mixed_space(), fn, 25, 4, max_queue_len=4)
    assert len(trials.trials) == 25
    assert any(t["result"]["status"] == "fail" for t in trials.trials)
    ok = [l for l in trials.losses() if l is not None]
    assert len(ok) + sum(t["result"]["status"] == "fail" for t in trials.trials) == 25 and min(ok) < min(ok[:6])
    keys = [point_key(assignment_of(t)) for t in trials.trials]
    assert len(set(keys)) == len(keys)


# ---------------------------------------------------------------- parallel awareness
def _branin(p):
    x, y = p["x"], p["y"]
    return ((y - 5.1 / (4 * math.pi ** 2) * x ** 2 + 5 / math.pi * x - 6) ** 2
            + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x) + 10)


_BRANIN = {"x": hp.uniform("x", -5, 10), "y": hp.uniform("y", 0, 15)}


def _spread(algo, n_done: int, k: int, seed: int) -> float:
    """Mean pairwise distance (unit square) of k suggestions made in one batch after n_done random trials."""
    trials = _run(rand.suggest, _BRANIN, _branin, n_done, seed)
    domain = Domain(_branin, _BRANIN)
    docs = algo(list(range(n_done, n_done + k)), domain, trials, seed)
    assert [d["tid"] for d in docs] == list(range(n_done, n_done + k))
    pts = np.array([[(d["misc"]["vals"]["x"][0] + 5) / 15, d["misc"]["vals"]["y"][0] / 15] for d in docs])
    return float(np.mean([np.linalg.norm(a - b) for a, b in itertools.combinations(pts, 2)]))


@pytest.mark.parametrize("module,options", [(tpe, {"startup_trials": 5}), (gp, {"startup_trials": 5})],
                         ids=["tpe", "gp"])
def test_a_batch_with_the_constant_liar_spreads_out(module, options):
    with_liar = [_spread(functools.partial(module.suggest, **options), 40, 6, s) for s in range(3)]
    without = [_spread(functools.partial(module.suggest, constant_liar=False, **options), 40, 6, s) for s in range(3)]
    # K workers asking at once: without the lie they are sent to (nearly) the same place
    assert statistics.mean(with_liar) > 1.5 * statistics.mean(without), (with_liar, without)


def test_tpe_random_start_counts_queued_trials():
    domain = Domain(_branin, _BRANIN)
    trials = Trials()
    docs = tpe.suggest(list(range(5)), domain, trials, 3, startup_trials=5)
    assert len(docs) == 5
    trials.insert_trial_docs(docs)
    trials.refresh()
    # five queued, none finished: still random (no result to model), and tpe.suggest still answers
    more = tpe.suggest([5, 6], domain, trials, 4, startup_trials=5)
    assert [d["tid"] for d in more] == [5, 6]


# ---------------------------------------------------------------- options
@pytest.mark.parametrize("name,options,message", [
    ("bayes", {}, r"unknown search algorithm 'bayes' \(choose from optuna-tpe, nsga2, tpe, rand, anneal, grid, gp\)"),
    ("optuna-tpe", {"acquisition": "ei"}, r"'acquisition' does not apply to algorithm 'optuna-tpe'"),
    ("optuna-tpe", {"group": "auto"}, r"group='auto': must be true or false"),
    ("optuna-tpe", {"max_trials": 3}, r"max_trials=3: must be an integer >= 10"),
    ("optuna-tpe", {"n_ei_candidates": 0}, r"n_ei_candidates=0: must be an integer >= 1"),
    ("tpe", {"kappa": 2.0}, r"'kappa' does not apply to algorithm 'tpe'"),
    ("rand", {"startup_trials": 3}, r"'startup_trials' does not apply to algorithm 'rand' \(its options: none\)"),
    ("tpe", {"startup_trials": -1}, r"startup_trials=-1: must be an integer >= 0"),
    ("tpe", {"startup_trials": 2.5}, r"startup_trials=2.5: must be an integer"),
    ("tpe", {"gamma": 1.5}, r"gamma=1.5: must be a number > 0 and < 1"),
    ("tpe", {"constant_liar": "yes"}, r"constant_liar='yes': must be true or false"),
    ("grid", {"grid_points": 1}, r"grid_points=1: must be an integer >= 2"),
    ("gp", {"acquisition": "pi"}, r"acquisition='pi': choose from ei, ucb"),
    ("gp", {"kappa": 2.0}, r"'kappa' applies to acquisition 'ucb' only"),
    ("gp", {"acquisition": "ucb", "kappa": -1}, r"kappa=-1: must be a number >= 0"),
    ("gp", {"n_candidates": 0}, r"n_candidates=0: must be an integer >= 1"),
])
def test_bad_options_are_one_line_config_errors(name, options, message):
    with pytest.raises(ConfigError, match=message) as info:
        make_suggest(name, options)
    assert "\n" not in str(info.value)


def test_none_means_not_given_and_from_search_reads_the_algo_key():
    assert make_suggest("rand", {"grid_points": None}) is rand.suggest
    fn = from_search({"algo": "gp", "acquisition": "ucb", "kappa": 3.0, "startup_trials": 4, "xi": None})
    assert fn.func is gp.suggest and fn.keywords == {"acquisition": "ucb", "kappa": 3.0, "startup_trials": 4}
    assert set(ALGORITHMS) == {"optuna-tpe", "tpe", "rand", "anneal", "grid", "gp", "nsga2"}


def test_gp_refuses_a_dimension_whose_bounds_depend_on_another():
    a = hp.uniform("a", 0, 1)
    space = {"a": a, "b": hp.uniform("b", 0, a + 1)}
    with pytest.raises(ConfigError, match=r"'b' depends on another hyper-parameter"):
        make_suggest("gp", {}, space=space)
    assert [d.label for d in dimensions({"a": a})] == ["a"]
