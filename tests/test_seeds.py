"""A study's seed: drawn fresh unless --seed is given, recorded, shown by status, kept by resume, and
enough to rerun the study's first (random) trials exactly."""

from __future__ import annotations

import json

import pytest

from helpers import db_of, run_cli

pytestmark = pytest.mark.timeout(600)


def _launch(mongo_url: str, name: str, *extra: str) -> str:
    r = run_cli("launch", "x", "--objective", "synthetic", "--options", '{"sleep_s": 0.02}', "--study", name,
                "--max-evals", "4", "--workers", "1", "--queue-spare", "0", "--pruner", "none", "--mongo", mongo_url,
                "-q", *extra, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _params(db, name: str) -> list[dict]:
    return [d["params"] for d in db.jobs.find({"exp_key": f"mongotune:{name}"}).sort("tid", 1)]


def test_a_seed_is_drawn_recorded_shown_kept_and_reruns_the_first_trials(mongo_url):
    first = _launch(mongo_url, "a")
    _launch(mongo_url, "b")
    db = db_of(mongo_url)
    seed_a, seed_b = (db.studies.find_one({"_id": name})["seed"] for name in ("a", "b"))
    assert seed_a != seed_b and all(isinstance(s, int) and 0 <= s < 2**31 for s in (seed_a, seed_b))
    assert f"seed {seed_a}" in first  # launch says which seed it drew
    status = run_cli("status", "a", "--mongo", mongo_url)
    assert status.returncode == 0 and f"seed {seed_a}" in status.stdout, status.stdout + status.stderr
    as_json = run_cli("status", "a", "--json", "--mongo", mongo_url)
    assert json.loads(as_json.stdout)["seed"] == seed_a

    _launch(mongo_url, "a-again", "--seed", str(seed_a))
    assert db.studies.find_one({"_id": "a-again"})["seed"] == seed_a
    # the default search's first 10 trials are random draws from the seed: the same params, in order
    assert _params(db, "a-again") == _params(db, "a")
    assert _params(db, "b") != _params(db, "a")

    r = run_cli("resume", "a", "--max-evals", "6", "--workers", "1", "--mongo", mongo_url, "-q", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert db.studies.find_one({"_id": "a"})["seed"] == seed_a and len(_params(db, "a")) == 6
    db.client.close()


def test_the_seed_reaches_each_trials_training_and_the_split_stays_put():
    """A Keras study: the study's seed seeds every trial's training; the validation split has its own seed
    (--split-seed, 0 by default), so studies of one dataset validate on the same images."""
    from mongotune.objectives.launch import LaunchOptions, plan_launch

    plan = plan_launch(LaunchOptions(model="baseline", dataset="digits", max_evals=2, epochs=1))
    objective = plan.study.objective
    assert objective["training"]["seed"] == plan.study.seed and objective["dataset"]["seed"] == 0
    again = plan_launch(LaunchOptions(model="baseline", dataset="digits", max_evals=2, epochs=1, seed=5,
                                      split_seed=3))
    assert again.study.seed == 5 and again.study.objective["training"]["seed"] == 5
    assert again.study.objective["dataset"]["seed"] == 3
