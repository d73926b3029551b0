"""User errors: one clear line on stderr and exit code 2, through the real CLI."""

from __future__ import annotations

import pytest

from helpers import one_line_error, run_cli

pytestmark = pytest.mark.timeout(180)




def test_unknown_model(mongo_url):
    one_line_error(run_cli("launch", "resnet9000", "--mongo", mongo_url), "unknown model 'resnet9000'", "baseline")


def test_bad_url():
    one_line_error(run_cli("launch", "baseline", "--mongo", "postgres://x:secret@host/db"),
                    "bad MongoDB URL", "unknown scheme")


def test_bad_url_never_shows_password():
    line = one_line_error(run_cli("status", "s", "--mongo", "mongodb://u:hunter2@127.0.0.1:99999/db"), "bad port")
    assert "hunter2" not in line and "***" in line


def test_unreachable_server():
    from mongotune.store.embedded import free_port

    line = one_line_error(run_cli("studies", "--mongo", f"mongodb://admin:s3cret@127.0.0.1:{free_port()}/db"),
                           "cannot reach MongoDB")
    assert "s3cret" not in line


def test_negative_max_evals(mongo_url):
    one_line_error(run_cli("launch", "baseline", "--max-evals", "-3", "--mongo", mongo_url), "--max-evals",
                    "positive")


def test_unknown_study(mongo_url):
    one_line_error(run_cli("status", "nope", "--mongo", mongo_url), "no study named 'nope'")


def test_bad_space_file(tmp_path, mongo_url):
    bad = tmp_path / "space.json"
    bad.write_text('{"lr": {"hp": "loguniform", "low": 0, "high": 1}}')
    one_line_error(run_cli("launch", "baseline", "--space", bad, "--mongo", mongo_url), "space", "lr", "0 < low")
    bad.write_text("{not json")
    one_line_error(run_cli("launch", "baseline", "--space", bad, "--mongo", mongo_url), "invalid JSON")


def test_bad_switch_value(mongo_url):
    one_line_error(run_cli("launch", "baseline", "--xla", "maybe", "--mongo", mongo_url), "--xla", "auto, on, off")
    one_line_error(run_cli("launch", "baseline", "--mixed-precision", "fp8", "--mongo", mongo_url),
                    "--mixed-precision", "'fp8'")


def test_startup_trials_only_for_tpe(mongo_url):
    one_line_error(run_cli("launch", "baseline", "--startup-trials", "0", "--mongo", mongo_url), "--startup-trials",
                    ">= 1")
    one_line_error(run_cli("launch", "baseline", "--algo", "rand", "--startup-trials", "5", "--mongo", mongo_url),
                    "--startup-trials", "--algo rand")


def test_usage_errors_are_one_line():
    one_line_error(run_cli("launch", "baseline", "--no-such-option", "3"), "No such option", "mongotune launch --help")
    one_line_error(run_cli("launch", "baseline", "--max-evals", "many"), "--max-evals")
    one_line_error(run_cli("status"), "Missing argument")
    one_line_error(run_cli("no-such-command"), "No such command")


def test_bad_search_and_pruning_options(mongo_url):
    one_line_error(run_cli("launch", "baseline", "--algo", "bayes", "--mongo", mongo_url), "unknown algorithm",
                    "'bayes'")
    one_line_error(run_cli("launch", "baseline", "--pruner", "sometimes", "--mongo", mongo_url), "unknown pruner")
    one_line_error(run_cli("launch", "baseline", "--pruner", "asha", "--reduction-factor", "1", "--mongo", mongo_url),
                    "--reduction-factor", ">= 2")
    one_line_error(run_cli("launch", "baseline", "--algo", "grid", "--mongo", mongo_url), "grid", "--grid-points")
    one_line_error(run_cli("launch", "baseline", "--algo", "tpe", "--kappa", "2", "--mongo", mongo_url), "--kappa")
