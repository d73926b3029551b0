"""The default search (Optuna's TPE behind hyperopt's suggest interface): its space translation, the mirror
of the trials it keeps between calls, distinct points for simultaneous asks, and how it ranks pruned and
failed trials."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hyperopt import Trials, fmin, hp, space_eval
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_NEW, JOB_STATE_RUNNING, Domain
from hyperopt.pyll import scope

from mongotune.search import optuna_tpe
from mongotune.search.algorithms import DEFAULT, make_suggest
from mongotune.search.dims import assignment_of, dimensions, new_docs, point_key
from mongotune.search.optuna_mirror import COMPLETE, FAILED, PENDING, PRUNED, StudyMirror
from mongotune.search.optuna_space import OptunaSpace

from search_cases import check_consistent, mixed_loss, mixed_space

pytestmark = pytest.mark.timeout(300)


def _grid_space(n=4, dims=3):
    return {f"x{i}": scope.int(hp.quniform(f"x{i}", -0.49, n - 0.51, 1)) for i in range(dims)}


def _insert(trials, domain, tid, assignment, *, state=JOB_STATE_DONE, result=None, **extra):
    docs = new_docs(trials, domain, tid, assignment)
    docs[0].update(state=state, result=result or {"status": "new"}, **extra)
    trials.insert_trial_docs(docs)
    trials.refresh()
    return docs[0]


def _mirror_of(trials):
    (search,) = trials.__dict__["_mongotune_optuna"].values()
    return search.mirror


# ---------------------------------------------------------------- the space
def test_every_hyperopt_kind_maps_to_an_optuna_distribution_and_back():
    space = {"c": hp.choice("c", ["a", "b", "c"]), "r": hp.randint("r", 2, 7),
             "u": hp.uniform("u", -1, 1), "lu": hp.loguniform("lu", math.log(1e-4), 0),
             "q": hp.quniform("q", 0.1, 0.9, 0.1), "ql": hp.qloguniform("ql", math.log(4), math.log(256), 4),
             "n": hp.normal("n", 3, 2)}
    params = OptunaSpace(dimensions(space)).by_label
    assert params["c"].distribution.choices == (0, 1, 2) and params["c"].to_hyperopt(2) == 2
    assert params["r"].distribution.choices == (2, 3, 4, 5, 6)  # hyperopt's randint is unordered
    lu = params["lu"].distribution
    assert lu.log and lu.low == pytest.approx(1e-4) and lu.high == pytest.approx(1.0)
    q = params["q"]
    assert (q.distribution.low, q.distribution.high) == (1, 9) and q.to_hyperopt(5) == pytest.approx(0.5)
    assert q.to_optuna(0.30000000000000004) == 3
    ql = params["ql"]
    assert ql.distribution.log and (ql.distribution.low, ql.distribution.high) == (1, 64)
    assert ql.to_hyperopt(16) == 64.0
    n = params["n"]
    assert n.to_hyperopt(0.5) == pytest.approx(3.0) and n.to_optuna(3.0) == pytest.approx(0.5)
    assert params["c"].to_optuna(7) is None and params["u"].to_optuna(5.0) == 1.0  # out of range: none, clipped


# ---------------------------------------------------------------- stock fmin
def test_stock_fmin_on_a_conditional_space_gives_consistent_trials_and_learns():
    trials = Trials()
    fmin(mixed_loss, mixed_space(), algo=make_suggest(DEFAULT), max_evals=50, trials=trials,
         rstate=np.random.default_rng(3), show_progressbar=False)
    assert len(trials.trials) == 50
    for doc in trials.trials:
        check_consistent(doc)
    losses = trials.losses()
    assert np.median(losses[20:]) < np.median(losses[:10]), losses
    assert _mirror_of(trials).rebuilds == 0  # kept up to date incrementally across fmin's calls


def test_a_small_discrete_space_is_searched_without_repeats_until_it_is_exhausted():
    trials = Trials()
    fmin(lambda p: sum((v - 2) ** 2 for v in p.values()), _grid_space(), algo=make_suggest(DEFAULT),
         max_evals=64, trials=trials, rstate=np.random.default_rng(0), show_progressbar=False)
    keys = [point_key(assignment_of(d)) for d in trials.trials]
    assert len(set(keys)) == 64 and min(trials.losses()) == 0
    # the 65th has nothing new to propose: a repeat, not an error
    domain = Domain(lambda p: 0.0, _grid_space())
    (doc,) = optuna_tpe.suggest([64], domain, trials, 1)
    assert point_key(assignment_of(doc)) in set(keys)


def test_without_dedupe_tpe_repeats_itself_on_a_discrete_space():
    trials = Trials()
    fmin(lambda p: sum((v - 2) ** 2 for v in p.values()), _grid_space(), algo=make_suggest(DEFAULT, {"dedupe": False}),
         max_evals=40, trials=trials, rstate=np.random.default_rng(0), show_progressbar=False)
    keys = [point_key(assignment_of(d)) for d in trials.trials]
    assert len(set(keys)) < 40  # what the default's dedupe is there for


# ---------------------------------------------------------------- parallel asks
@pytest.mark.parametrize("space", [_grid_space(6, 2), mixed_space()], ids=["discrete", "conditional"])
def test_k_simultaneous_suggestions_are_distinct(space):
    domain = Domain(lambda p: 0.0, space)
    trials = Trials()
    rng = np.random.default_rng(0)
    for tid, doc in enumerate(optuna_tpe.suggest(list(range(12)), domain, trials, 5)):
        loss = float(rng.random())
        _insert(trials, domain, tid, assignment_of(doc), result={"status": "ok", "loss": loss})
    k = 6 if "x0" in space else 16
    batch = optuna_tpe.suggest(list(range(12, 12 + k)), domain, trials, 9)
    assert [d["tid"] for d in batch] == list(range(12, 12 + k))
    keys = [point_key(assignment_of(d)) for d in trials.trials + batch]
    assert len(set(keys)) == len(keys)
    # and asked one call at a time, with the earlier ones queued or running
    for i, doc in enumerate(batch[:3]):
        _insert(trials, domain, doc["tid"], assignment_of(doc), state=(JOB_STATE_NEW, JOB_STATE_RUNNING)[i % 2])
    for tid in (40, 41):
        (doc,) = optuna_tpe.suggest([tid], domain, trials, tid)
        _insert(trials, domain, tid, assignment_of(doc), state=JOB_STATE_NEW)
    keys = [point_key(assignment_of(d)) for d in trials.trials]
    assert len(set(keys)) == len(keys)


# ---------------------------------------------------------------- what the sampler is told
def test_the_mirror_follows_pending_finished_pruned_failed_and_vanished_trials():
    from optuna.trial import TrialState

    domain = Domain(lambda p: 0.0, _grid_space())
    space = OptunaSpace(dimensions(domain))
    trials = Trials()
    _insert(trials, domain, 0, {"x0": 0, "x1": 0, "x2": 0}, result={"status": "ok", "loss": 1.5})
    _insert(trials, domain, 1, {"x0": 1, "x1": 0, "x2": 0}, state=JOB_STATE_RUNNING)
    _insert(trials, domain, 2, {"x0": 2, "x1": 0, "x2": 0},
            result={"status": "ok", "loss": 0.2, "pruned": True, "pruned_at": 3},
            curve=[{"step": s, "value": 0.5} for s in (1, 2, 3)])
    _insert(trials, domain, 3, {"x0": 3, "x1": 0, "x2": 0}, result={"status": "fail"})
    mirror = StudyMirror(space)
    mirror.sync(trials.trials)
    by_tid = {t.user_attrs["tid"]: t for t in mirror.study.get_trials(deepcopy=False)}
    assert by_tid[0].state == TrialState.COMPLETE and by_tid[0].value == 1.5
    assert by_tid[1].state == TrialState.RUNNING
    assert by_tid[2].state == TrialState.PRUNED and by_tid[2].intermediate_values == {3: 0.2}
    assert by_tid[3].state == TrialState.COMPLETE and by_tid[3].constraints == {"failed": 1.0}
    assert [mirror.rows[t].kind for t in range(4)] == [COMPLETE, PENDING, PRUNED, FAILED]
    # the running trial finishes: one state change, no rebuild
    trials.trials[1].update(state=JOB_STATE_DONE, result={"status": "ok", "loss": 0.7})
    trials.refresh()
    mirror.sync(trials.trials)
    assert mirror.rebuilds == 0 and mirror.study.get_trials()[1].value == 0.7
    # a finished trial disappears (Trials.delete_all, a study copied back): rebuilt from scratch
    trials._dynamic_trials.pop(0)
    trials.refresh()
    mirror.sync(trials.trials)
    assert mirror.rebuilds == 1 and sorted(mirror.rows) == [1, 2, 3] and len(mirror.study.get_trials()) == 3


def test_a_point_asked_but_never_inserted_is_forgotten():
    domain = Domain(lambda p: 0.0, _grid_space())
    trials = Trials()
    (doc,) = optuna_tpe.suggest([0], domain, trials, 1)  # not inserted: a coordinator stopped mid-batch
    mirror = _mirror_of(trials)
    assert list(mirror.rows) == [0]
    optuna_tpe.suggest([0], domain, trials, 2)
    from optuna.trial import TrialState

    states = [t.state for t in mirror.study.get_trials(deepcopy=False)]
    assert states.count(TrialState.FAIL) >= 1 and mirror.rebuilds == 0


def _two_region_trials(pruned_region: str):
    """A good region (x < 0.5) and a bad one; the trials of ``pruned_region`` were pruned at epoch 1
    with a loss that looks better than any complete trial's (what an early reading often does)."""
    space = {"x": hp.uniform("x", 0, 1)}
    domain = Domain(lambda p: 0.0, space)
    trials = Trials()
    rng = np.random.default_rng(1)
    for tid in range(40):
        x = float(rng.uniform(0, 0.5)) if tid % 2 == 0 else float(rng.uniform(0.5, 1))
        region = "low" if x < 0.5 else "high"
        if region == pruned_region:
            result = {"status": "ok", "loss": 0.01, "pruned": True, "pruned_at": 1}
        else:
            result = {"status": "ok", "loss": 0.5 + float(rng.random()) * 0.1}
        _insert(trials, domain, tid, {"x": x}, result=result)
    return domain, trials


def test_pruned_trials_rank_after_complete_ones_so_an_early_good_reading_does_not_attract_the_search():
    domain, trials = _two_region_trials("high")
    docs = []
    for i in range(20):
        docs += optuna_tpe.suggest([40 + i], domain, trials, 100 + i, constant_liar=False)
    xs = [d["misc"]["vals"]["x"][0] for d in docs]
    assert sum(x < 0.5 for x in xs) >= 15, xs  # the complete trials' region, not the pruned one's
    # and the same trials with the pruned ones counted as complete (their loss taken as final) would
    # send the search the other way: the rank, not just the loss, reaches the sampler
    for d in trials.trials:
        d["result"].pop("pruned", None)
    trials.refresh()
    docs = []
    for i in range(20):
        docs += optuna_tpe.suggest([80 + i], domain, trials, 100 + i, constant_liar=False)
    xs = [d["misc"]["vals"]["x"][0] for d in docs]
    assert sum(x >= 0.5 for x in xs) >= 15, xs


def test_failed_trials_push_the_search_away():
    space = {"x": hp.uniform("x", 0, 1)}
    trials = Trials()

    def fn(p):
        if p["x"] > 0.6:
            return {"status": "fail"}
        return {"status": "ok", "loss": abs(p["x"] - 0.55)}

    fmin(fn, space, algo=make_suggest(DEFAULT), max_evals=60, trials=trials, rstate=np.random.default_rng(2),
         show_progressbar=False)
    failed_late = sum(d["result"]["status"] == "fail" for d in trials.trials[30:])
    failed_early = sum(d["result"]["status"] == "fail" for d in trials.trials[:10])
    # the optimum borders the failing region, so some later trials still cross it (9 of 30 here); with
    # failures hidden from the sampler (Optuna drops FAIL trials) nearly all of them did (30 of 30 over 10 seeds)
    assert failed_early >= 2 and failed_late <= 15, (failed_early, failed_late)


def test_large_studies_show_the_sampler_a_bounded_set():
    domain = Domain(lambda p: 0.0, {"x": hp.uniform("x", 0, 1)})
    trials = Trials()
    rng = np.random.default_rng(0)
    for tid in range(60):
        _insert(trials, domain, tid, {"x": float(rng.random())}, result={"status": "ok", "loss": float(tid)})
    docs = optuna_tpe.suggest([60], domain, trials, 0, max_trials=20)
    mirror = _mirror_of(trials)
    # the best quarter of max_trials (losses grow with the tid) and the most recent quarter
    assert sorted(t for t in mirror.rows if t < 60) == [0, 1, 2, 3, 4, 55, 56, 57, 58, 59]
    assert len(docs) == 1 and 0 <= space_eval({"x": hp.uniform("x", 0, 1)}, assignment_of(docs[0]))["x"] <= 1
    # then it grows with every new trial, without a rebuild, until max_trials again
    rebuilds = mirror.rebuilds
    for tid in range(60, 70):
        _insert(trials, domain, tid, assignment_of(docs[0]), result={"status": "ok", "loss": 100.0 + tid})
        docs = optuna_tpe.suggest([tid + 1], domain, trials, tid, max_trials=20)
    assert mirror.rebuilds == rebuilds and len([t for t in mirror.rows if t < 70]) == 20
    optuna_tpe.suggest([71], domain, trials, 1, max_trials=20)  # one more: chosen again
    assert mirror.rebuilds == rebuilds  # not counted: the mirror was full, not wrong



# ---------------------------------------------------------------- BOHB-style: the model at the highest rung
def _curve_doc(tid, values, *, pruned_at=None, lease="a"):
    result = {"status": "ok", "loss": -max(values)}
    if pruned_at is not None:
        result.update(pruned=True, pruned_at=pruned_at)
    return {"tid": tid, "state": JOB_STATE_DONE, "result": result,
            "curve": [{"step": i + 1, "value": v, "lease": lease} for i, v in enumerate(values)]}


def test_at_highest_rung_compares_every_trial_at_one_step():
    from mongotune.search.fidelity import at_highest_rung

    docs = [_curve_doc(0, [0.5, 0.6, 0.7, 0.9]),  # ran to the end
            _curve_doc(1, [0.6, 0.8, 0.85], pruned_at=3),
            _curve_doc(2, [0.7, 0.75, 0.8], pruned_at=3),
            _curve_doc(3, [0.9], pruned_at=1),  # a fast starter stopped at the first rung
            {"tid": 4, "state": JOB_STATE_RUNNING, "result": {"status": "new"}},
            {"tid": 5, "state": JOB_STATE_DONE, "result": {"status": "fail"}}]
    seen = at_highest_rung(docs, "max", min_trials=3)
    # step 3 is the highest step three finished trials reached; accuracy is maximised, so losses are negated
    assert [d["result"] for d in seen[:4]] == [
        {"status": "ok", "loss": -0.7}, {"status": "ok", "loss": -0.85}, {"status": "ok", "loss": -0.8},
        {"status": "ok", "loss": -0.9, "pruned": True, "pruned_at": 1}]
    assert seen[4] is docs[4] and seen[5] is docs[5]
    assert at_highest_rung(docs, "max", min_trials=5) is docs  # no step is that full: unchanged
    # a requeued trial's earlier run does not count
    twice = _curve_doc(6, [0.1, 0.2, 0.3, 0.4], lease="old")
    twice["curve"] += [{"step": 1, "value": 0.95, "lease": "new"}]
    assert at_highest_rung(docs[:3] + [twice], "max", min_trials=3)[3]["result"] == {
        "status": "ok", "loss": -0.95, "pruned": True, "pruned_at": 1}


def test_fidelity_rung_search_runs_through_fmin_with_curves():
    domain = Domain(lambda p: 0.0, {"x": hp.uniform("x", 0, 1)})
    trials = Trials()
    rng = np.random.default_rng(4)
    for tid in range(60):
        x = float(rng.random())
        steps = 9 if tid % 2 == 0 else 3
        values = [1 - abs(x - 0.3) - 0.5 / s for s in range(1, steps + 1)]
        doc = new_docs(trials, domain, tid, {"x": x})[0]
        doc.update(_curve_doc(tid, values, pruned_at=None if steps == 9 else 3))
        trials.insert_trial_docs([doc])
    trials.refresh()
    algo = make_suggest(DEFAULT, {"fidelity": "rung", "goal": "max"})
    xs = [algo([60 + i], domain, trials, i)[0]["misc"]["vals"]["x"][0] for i in range(15)]
    assert sum(abs(x - 0.3) < 0.2 for x in xs) >= 9, xs


# ---------------------------------------------------------------- several objectives
def _two_objectives(p):
    """A front between x=0 (first objective best) and x=1 (second best); y only adds to both."""
    f1, f2 = p["x"] ** 2 + p["y"], (1 - p["x"]) ** 2 + p["y"]
    return {"status": "ok", "loss": f1, "losses": [f1, f2], "constraints": [p["x"] - 0.8]}


@pytest.mark.parametrize("name,options", [("optuna-tpe", {"objectives": 2}), ("nsga2", {"population_size": 8})])
def test_several_objectives_through_fmin_approach_the_feasible_front(name, options):
    space = {"x": hp.uniform("x", 0, 1), "y": hp.uniform("y", 0, 1)}
    trials = Trials()
    fmin(_two_objectives, space, algo=make_suggest(name, options), max_evals=60, trials=trials,
         rstate=np.random.default_rng(0), show_progressbar=False)
    late = [d["misc"]["vals"] for d in trials.trials[30:]]
    early = [d["misc"]["vals"] for d in trials.trials[:10]]
    # on the front y is 0; later trials come closer to it, and mostly stay feasible (x <= 0.8)
    assert np.median([v["y"][0] for v in late]) < np.median([v["y"][0] for v in early]) / 2
    assert sum(v["x"][0] <= 0.8 for v in late) >= 20
    (search,) = trials.__dict__["_mongotune_optuna"].values()
    done = [t for t in search.mirror.study.get_trials() if t.values is not None]
    assert done and all(len(t.values) == 2 for t in done)
    assert any(t.constraints.get("c0", -1) > 0 for t in done)  # infeasible results reach the sampler as such


def test_a_result_without_every_objective_counts_as_failed():
    from mongotune.search.optuna_mirror import outcome

    doc = {"state": JOB_STATE_DONE, "result": {"status": "ok", "loss": 1.0, "losses": [1.0]}}
    assert outcome(doc, 2).kind == FAILED and outcome(doc, 1).kind == COMPLETE
    doc["result"]["losses"] = [1.0, float("nan")]
    assert outcome(doc, 2).kind == FAILED
    doc["result"].update(losses=[1.0, 2.0], pruned=True, pruned_at=3, constraints=[0.5, -1])
    out = outcome(doc, 2)
    assert (out.kind, out.values, out.step, out.constraints) == (PRUNED, (1.0, 2.0), 3, (0.5, -1.0))
