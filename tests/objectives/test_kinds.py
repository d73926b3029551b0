"""Objective kinds: one interface, a fixed table, and nothing outside mongotune/objectives asks which kind a
study is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mongotune.errors import ConfigError, TrialFailure
from mongotune.objectives import describe, objective_kind, run_trial, runs_user_code
from mongotune.store.studies import Study

PACKAGE = Path(__file__).resolve().parents[2] / "mongotune"
KERAS = {"kind": "keras", "model": "baseline", "dataset": {"name": "npz", "source": "/data/x.npz"},
         "training": {"epochs": 7, "weights": "/w/vgg.h5"}}


def study(objective: dict, **fields) -> Study:
    return Study(name="s", max_evals=3, objective=objective, **fields)


def test_each_objective_has_one_kind_from_the_table():
    assert objective_kind(KERAS).name == "keras" and not objective_kind(KERAS).user_code
    model_fn = objective_kind({**KERAS, "model_fn": "pkg.mod:build"})
    assert model_fn.name == "keras" and model_fn.user_code and model_fn is not objective_kind(KERAS)
    assert objective_kind({"kind": "command", "command": ["x"]}).user_code
    assert objective_kind(study({"kind": "sleep"})).name == "sleep"
    assert objective_kind({"kind": "hyperopt"}).user_code and not objective_kind({"kind": "hyperopt"}).seeded
    with pytest.raises(ConfigError, match="unknown objective kind 'mystery'"):
        objective_kind({"kind": "mystery"})


def test_user_code_and_test_kinds(monkeypatch):
    assert not runs_user_code(KERAS) and not runs_user_code({"kind": "sleep"})
    assert runs_user_code({**KERAS, "model_fn": "m:f"}) and runs_user_code({"kind": "command"})
    assert runs_user_code({"kind": "mystery"})  # unknown: never run without --allow-user-code
    assert not runs_user_code({"kind": "synthetic"})  # the test suite switched test kinds on
    monkeypatch.delenv("MONGOTUNE_TEST_OBJECTIVES")
    assert runs_user_code({"kind": "synthetic"})
    with pytest.raises(TrialFailure, match="mongotune's own tests"):
        run_trial(study({"kind": "synthetic"}), {}, None)
    with pytest.raises(TrialFailure, match="unknown objective kind"):
        run_trial(study({"kind": "mystery"}), {}, None)


def test_what_a_kind_says_about_its_study():
    keras = study(KERAS)
    kind = objective_kind(keras)
    assert kind.local_paths(keras) == ["/data/x.npz", "/w/vgg.h5"] and kind.max_epochs(keras) == 7
    assert describe(keras) == "baseline on npz"
    assert describe(study({"kind": "command", "command": ["python", "t.py"]})) == "command python t.py"
    assert describe(study({"kind": "mystery"})) == "mystery"
    assert objective_kind({"kind": "command"}).local_paths(keras) == []
    assert objective_kind({"kind": "sleep"}).space(study({"kind": "sleep"})) == {
        "x": {"hp": "uniform", "low": -1.0, "high": 1.0}}
    assert objective_kind(keras).metric(study(KERAS, metric={"name": "val_loss", "goal": "min"}))["goal"] == "min"


def test_final_retrains_keras_models_only_and_user_code_only_when_allowed():
    objective_kind(KERAS).check_final(study(KERAS), allow_user_code=False)
    fn = study({**KERAS, "model_fn": "m:f"})
    with pytest.raises(ConfigError, match="--allow-user-code"):
        objective_kind(fn).check_final(fn, allow_user_code=False)
    objective_kind(fn).check_final(fn, allow_user_code=True)
    for other in ({"kind": "command"}, {"kind": "sleep"}, {"kind": "hyperopt"}):
        with pytest.raises(ConfigError, match="retrains Keras models only"):
            objective_kind(other).check_final(study(other), allow_user_code=True)


def test_studies_written_before_the_generic_core_are_read_by_their_kind():
    old = Study.from_doc({"_id": "o", "name": "o", "max_evals": 5, "objective": "keras", "model": "baseline",
                          "dataset": {"name": "digits"}, "training": {"loss": "val_loss"}})
    assert old.objective["model"] == "baseline" and old.metric == {"name": "val_loss", "goal": "min"}
    cmd = Study.from_doc({"_id": "c", "name": "c", "max_evals": 5, "objective": "command",
                          "options": {"metric": "auc", "goal": "max"}})
    assert cmd.objective == {"kind": "command", "options": {"metric": "auc", "goal": "max"}}
    assert cmd.metric == {"name": "auc", "goal": "max"}
    odd = Study.from_doc({"_id": "m", "name": "m", "max_evals": 5, "objective": "mystery"})
    assert odd.objective["kind"] == "mystery" and odd.metric == {"name": "loss", "goal": "min"}


def test_nothing_outside_objectives_asks_which_kind_a_study_is():
    kinds = "keras|command|synthetic|sleep|hyperopt"
    asks = re.compile(rf"""\bkind\s*(==|!=|\bin\b)\s*[(\[{{]?\s*["']({kinds})["']|["']({kinds})["']\s*(==|!=)""")
    found = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(("objectives/", "search/")):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if asks.search(line):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "\n".join(found)
