"""Several objectives and constraints: the --metric/--constraint grammar, a trial's scored result, the study
document they make, and the Pareto front and hypervolume every view uses (issue 22)."""

from __future__ import annotations

import itertools
import random

import pytest

from mongotune.errors import ConfigError, TrialFailure
from mongotune.objectives.launch import LaunchOptions, plan_launch
from mongotune.objectives.metrics import check_algorithm, parse_constraint, parse_metrics, score
from mongotune.store import pareto
from mongotune.store.best import feasible
from mongotune.store.studies import Study

CMD = dict(command="python train.py --lr {lr}", param=["lr:1e-4:1e-1:log"], study="mo")


def test_metric_grammar():
    assert parse_metrics(["acc", "size:min", "t:max"], "max") == [
        {"name": "acc", "goal": "max"}, {"name": "size", "goal": "min"}, {"name": "t", "goal": "max"}]
    assert parse_metrics(["params"], "max", {"params": "min"}) == [{"name": "params", "goal": "min"}]
    with pytest.raises(ConfigError, match="given twice"):
        parse_metrics(["a", "a:min"], "max")
    with pytest.raises(ConfigError, match="unknown direction 'up'"):
        parse_metrics(["a:up"], "max")
    assert parse_constraint("params <= 2e6") == {"metric": "params", "op": "<=", "bound": 2e6}
    assert parse_constraint("acc>=0.5")["op"] == ">="
    for bad in ("params<2e6", "params<=nan", "<=3", "params<=x"):
        with pytest.raises(ConfigError):
            parse_constraint(bad)
    with pytest.raises(ConfigError, match="never reports 'lat'"):
        parse_constraint("lat<=3", {"acc": "max"})
    check_algorithm("optuna-tpe", 2, 1)
    check_algorithm("optuna-tpe", 1, 1)
    for algo, k, c in (("tpe", 2, 0), ("nsga2", 1, 0), ("gp", 1, 1)):
        with pytest.raises(ConfigError):
            check_algorithm(algo, k, c)


def test_score_adds_losses_and_constraints_only_where_the_study_has_them():
    one = Study(name="s", max_evals=1, objective={"kind": "command"}, metric={"name": "acc", "goal": "max"})
    result = {"status": "ok", "loss": -0.9, "acc": 0.9, "size": 3.0}
    assert score(one, result) is result  # one metric, no constraint: exactly as before
    two = Study(name="s", max_evals=1, objective={"kind": "command"}, metric={"name": "acc", "goal": "max"},
                metrics=[{"name": "acc", "goal": "max"}, {"name": "size", "goal": "min"}],
                constraints=[{"metric": "size", "op": "<=", "bound": 2.0}]).validate()
    scored = score(two, result)
    assert scored["losses"] == [-0.9, 3.0] and scored["loss"] == -0.9 and scored["constraints"] == [1.0]
    assert not feasible(scored) and feasible({**scored, "constraints": [-1.0, 0.0]})
    with pytest.raises(TrialFailure, match="size"):
        score(two, {"status": "ok", "loss": -0.9, "acc": 0.9})
    assert "losses" not in score(two, {"status": "ok", "loss": -0.9, "acc": 0.9}, pruned=True)
    assert score(two, {"status": "fail"}) == {"status": "fail"}


def test_study_validation():
    with pytest.raises(ConfigError, match="first of its metrics"):
        Study(name="s", max_evals=1, objective={"kind": "x"}, metric={"name": "acc", "goal": "max"},
              metrics=[{"name": "size", "goal": "min"}, {"name": "acc", "goal": "max"}]).validate()
    with pytest.raises(ConfigError, match="finite bound"):
        Study(name="s", max_evals=1, objective={"kind": "x"}, constraints=[{"metric": "a", "op": "<", "bound": 1}]
              ).validate()


def test_one_metric_keeps_the_study_document_as_before():
    doc = plan_launch(LaunchOptions(**CMD, metric=["acc"])).study.to_doc()
    assert "metrics" not in doc and "constraints" not in doc and "objectives" not in doc["search"]
    assert doc["metric"] == {"name": "acc", "goal": "max"}


def test_several_metrics_and_constraints_in_the_study_document():
    study = plan_launch(LaunchOptions(**CMD, metric=["acc", "size:min"], constraint=["size<=4"], algo="nsga2")).study
    doc = study.to_doc()
    assert doc["metric"] == {"name": "acc", "goal": "max"}
    assert doc["metrics"] == [{"name": "acc", "goal": "max"}, {"name": "size", "goal": "min"}]
    assert doc["constraints"] == [{"metric": "size", "op": "<=", "bound": 4.0}]
    assert doc["search"] == {"algo": "nsga2", "objectives": 2}
    assert Study.from_doc(doc).objectives == doc["metrics"]


def _brute_front(points):
    return [p for p in points if not any(pareto.dominates(q, p) for q in points)]


def test_front_and_hypervolume_against_brute_force():
    rng = random.Random(3)
    for dims in (2, 3):
        pts = [tuple(rng.randint(0, 9) for _ in range(dims)) for _ in range(40)]
        assert sorted(pareto.front(pts, lambda p: p)) == sorted(_brute_front(pts))
    # hypervolume on a grid: count the unit cells dominated inside the box [0, 10)^k
    for dims in (2, 3):
        pts = [tuple(rng.randint(0, 9) for _ in range(dims)) for _ in range(8)]
        cells = sum(1 for c in itertools.product(range(10), repeat=dims)
                    if any(all(p[i] <= c[i] for i in range(dims)) for p in pts))
        assert pareto.hypervolume(pts, [10] * dims) == pytest.approx(cells)
    history = pareto.hypervolume_history([None, (1.0, 2.0), (2.0, 1.0), (3.0, 3.0), None])
    assert history[0] is None and history[1] < history[2] == history[3] == history[4]
