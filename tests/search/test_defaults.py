"""What `mongotune launch` searches and prunes with when told nothing: the names in mongotune.search."""

from __future__ import annotations

import json

import pytest

from mongotune.search import defaults
from mongotune.search.algorithms import DEFAULT, make_suggest
from mongotune.search.optuna_tpe import suggest as optuna_tpe_suggest

from helpers import db_of, run_cli

pytestmark = pytest.mark.timeout(300)


def test_default_names_the_optuna_tpe_adapter():
    assert DEFAULT == defaults.ALGORITHM == "optuna-tpe"
    assert make_suggest(DEFAULT) is optuna_tpe_suggest


def test_launch_without_algo_or_pruner_uses_the_defaults_and_says_so(mongo_url):
    r = run_cli("launch", "x", "--study", "dflt", "--objective", "synthetic", "--options",
                json.dumps({"sleep_s": 0.0, "steps": 3}), "--max-evals", 3, "--workers", 1, "--mongo", mongo_url,
                "-q")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{DEFAULT}, {defaults.PRUNER['kind']} pruning" in r.stdout
    study = db_of(mongo_url).studies.find_one({"_id": "dflt"})
    assert study["search"]["algo"] == DEFAULT
    assert study["pruner"] == defaults.PRUNER
    off = run_cli("launch", "x", "--study", "off", "--objective", "synthetic", "--pruner", "none",
                  "--max-evals", 1, "--workers", 1, "--mongo", mongo_url, "-q")
    assert off.returncode == 0, off.stderr[-2000:]
    assert db_of(mongo_url).studies.find_one({"_id": "off"}).get("pruner") is None


def test_launch_help_names_the_default_search_and_pruner_and_why():
    r = run_cli("launch", "--help", COLUMNS="200")
    text = " ".join(r.stdout.split())
    assert f"Default {DEFAULT}" in text and "Optuna's own default TPE" in text
    assert f"Default: {defaults.PRUNER['kind']}" in text and "README" in text


@pytest.mark.parametrize("options,message", [
    ({"bogus": 1}, "'bogus' does not apply to algorithm 'optuna-tpe'"),
    ({"kappa": 2.0}, "'kappa' does not apply to algorithm 'optuna-tpe'"),
    ({"fidelity": "epochs"}, "fidelity='epochs': choose from final, rung"),
])
def test_bad_options_of_the_default_are_one_line_errors(options, message):
    from mongotune.errors import ConfigError

    with pytest.raises(ConfigError, match=message) as info:
        make_suggest(DEFAULT, options)
    assert "\n" not in str(info.value)


def test_launch_refuses_an_option_of_another_algorithm_with_the_default(mongo_url):
    r = run_cli("launch", "x", "--study", "bad", "--objective", "synthetic", "--acquisition", "ucb",
                "--mongo", mongo_url, "-q")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error:"), r.stderr
    assert "--acquisition applies to --algo gp" in r.stderr
