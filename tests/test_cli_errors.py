"""User errors: one clear line on stderr and exit code 2, through the real CLI.

The fast-error cases also check that the answer came before anything heavy was imported (TensorFlow,
Keras, numpy, pymongo, hyperopt, optuna, ...): the command runs under a small wrapper that writes the
names of the modules it loaded, at exit, to a file.  How fast they answer is measured in
bench/bench_cli.py, not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import env, one_line_error, run_cli

pytestmark = pytest.mark.timeout(180)

HEAVY = ("tensorflow", "keras", "numpy", "pymongo", "bson", "hyperopt", "optuna", "scipy", "pandas", "sklearn",
         "mongoeco")

# runs `mongotune ARGS` as `python -m mongotune` would, then writes sys.modules' top-level names to MODULES
_WRAPPER = """
import atexit, json, os, runpy, sys
out = os.environ["MONGOTUNE_TEST_MODULES_FILE"]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted({m.split(".")[0] for m in sys.modules}))))
sys.argv = ["mongotune", *sys.argv[1:]]
runpy.run_module("mongotune", run_name="__main__", alter_sys=True)
"""


def run_traced(tmp_path, *args) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run the CLI; return its result and the top-level modules it had imported when it exited."""
    modules = tmp_path / "modules.json"
    modules.unlink(missing_ok=True)
    r = subprocess.run([sys.executable, "-c", _WRAPPER, *map(str, args)], capture_output=True, text=True,
                       timeout=120, env=env(MONGOTUNE_TEST_MODULES_FILE=modules), stdin=subprocess.DEVNULL)
    return r, set(json.loads(modules.read_text())) if modules.exists() else set()


def fast_error(tmp_path, args, *needles, allowed=()) -> str:
    """One error line, exit 2, and no heavy module imported (``allowed`` ones aside)."""
    r, loaded = run_traced(tmp_path, *args)
    line = one_line_error(r, *needles)
    assert loaded, "the wrapper recorded no modules"
    heavy = sorted(m for m in loaded & set(HEAVY) if m not in allowed)
    assert not heavy, f"`mongotune {' '.join(map(str, args))}` imported {heavy} before answering: {line}"
    return line


CMD = ["launch", "--study", "c", "--command", "python train.py --lr {lr}", "--param", "lr:1e-4:1e-1:log", "--metric", "acc"]

FAST_ERRORS = {
    # a built-in Keras model
    "unknown model": (["launch", "resnet9000"], "unknown model 'resnet9000'", "baseline"),
    "unknown dataset": (["launch", "baseline", "--dataset", "imagenet9"], "unknown dataset 'imagenet9'"),
    "unknown algorithm": (["launch", "baseline", "--algo", "bayes"], "unknown algorithm 'bayes'", "optuna-tpe"),
    "unknown pruner": (["launch", "baseline", "--pruner", "sometimes"], "unknown pruner 'sometimes'"),
    "bad study name": (["launch", "baseline", "--study", "no/such name"], "bad study name 'no/such name'"),
    "bad URL": (["launch", "baseline", "--mongo", "mongodb://[bad"], "bad MongoDB URL", "[bad"),
    "bad host": (["launch", "baseline", "--mongo", "mongodb://a b/db"], "bad MongoDB URL", "bad host"),
    "max-evals 0": (["launch", "baseline", "--max-evals", "0"], "--max-evals must be a positive integer, got 0"),
    "negative lease": (["launch", "baseline", "--lease", "-5"], "--lease must be > 0"),
    "grid over a continuous space": (["launch", "baseline", "--algo", "grid"], "grid search", "--grid-points"),
    "negative seed": (["launch", "baseline", "--seed", "-1"], "--seed must be an integer from 0"),
    "unknown loss": (["launch", "baseline", "--loss", "mse"], "unknown loss 'mse'"),
    "bad switch": (["launch", "baseline", "--xla", "maybe"], "--xla must be one of auto, on, off"),
    "bad image size": (["launch", "baseline", "--size", "0"], "size must be between 1"),
    "hyperband without epochs": (CMD + ["--pruner", "hyperband"], "hyperband needs", "--max-epochs"),
    # a command study
    "command: unknown algorithm": (CMD + ["--algo", "bayes"], "unknown algorithm 'bayes'"),
    "command: unknown pruner": (CMD + ["--pruner", "sometimes"], "unknown pruner 'sometimes'"),
    "command: max-evals 0": (CMD + ["--max-evals", "0"], "--max-evals must be a positive integer"),
    "command: bad param": (["launch", "--study", "c", "--command", "python t.py {lr}", "--param", "lr:1:0:log",
                            "--metric", "acc"], "--param lr:1:0:log"),
    "command: grid over a continuous space": (CMD + ["--algo", "grid"], "grid search: 'lr' is a continuous",
                                              "--grid-points"),
    "command: no metric": (CMD[:7], "needs --metric"),
    "command: no name": (["launch", *CMD[3:]], "needs a name"),
    "command: model options": (["launch", "baseline", "--timeout", "5m"], "--timeout only apply to --command"),
    # a --model-fn study
    # several objectives and constraints (issue 22)
    "metric named twice": (CMD + ["--metric", "acc:max"], "--metric acc is given twice"),
    "unknown direction": (CMD[:-1] + ["acc:up"], "unknown direction 'up'", "NAME:max or NAME:min"),
    "constraint on a metric never reported": (["launch", "baseline", "--constraint", "latency<=3"],
                                              "never reports 'latency'", "inference_ms"),
    "constraint without a bound": (CMD + ["--constraint", "acc<=big"], "'big' is not a number"),
    "single-objective algorithm": (CMD + ["--metric", "size:min", "--algo", "tpe"], "--algo tpe searches one "
                                   "objective", "optuna-tpe or nsga2"),
    "nsga2 with one objective": (CMD + ["--algo", "nsga2"], "--algo nsga2 searches several objectives"),
    "keras: metric it does not report": (["launch", "baseline", "--metric", "acc"], "reports val_accuracy",
                                         "not 'acc'"),
    "keras: first metric not the monitored one": (["launch", "baseline", "--metric", "params", "--metric",
                                                   "val_accuracy"], "the first --metric", "val_accuracy:max"),
    "model-fn: bad reference": (["launch", "--model-fn", "not a ref", "--space", "SPACE"], "--model-fn",
                                "package.module:function"),
    "model-fn: unknown dataset": (["launch", "--model-fn", "m:f", "--space", "SPACE", "--dataset", "imagenet9"],
                                  "unknown dataset 'imagenet9'"),
    "model-fn: no space": (["launch", "--model-fn", "m:f"], "needs a search space"),
    "model-fn: grid over a continuous space": (["launch", "--model-fn", "m:f", "--space", "SPACE", "--algo", "grid"],
                                               "grid search: 'lr' is a continuous", "--grid-points"),
    # the pool
    "worker: bad device": (["worker", "--gpu", "banana"], "--gpu 'banana'"),
    "worker: bad URL": (["worker", "--mongo", "mongodb://[bad"], "bad MongoDB URL"),
    "worker: max-trials 0": (["worker", "--max-trials", "0"], "--max-trials"),
    "hyperopt-worker: bad device": (["hyperopt-worker", "--allow-pickle", "--gpu", "banana"], "--gpu 'banana'"),
    "hyperopt-worker: no --allow-pickle": (["hyperopt-worker"], "--allow-pickle"),
    "resume: max-evals 0": (["resume", "s", "--max-evals", "0"], "--max-evals must be a positive integer"),
    "resume: bad URL": (["resume", "s", "--mongo", "mongodb://[bad"], "bad MongoDB URL"),
    # every command that takes --mongo
    "status: bad URL": (["status", "s", "--mongo", "mongodb://[bad"], "bad MongoDB URL"),
    "studies: bad port": (["studies", "--mongo", "mongodb://u:pw@h:99999/db"], "bad port", "u:***@"),
}


@pytest.mark.parametrize("case", list(FAST_ERRORS))
def test_fast_errors_answer_before_anything_heavy(case, tmp_path):
    args, *needles = FAST_ERRORS[case]
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"lr": {"hp": "loguniform", "low": 1e-4, "high": 1e-1}}))
    fast_error(tmp_path, [space if a == "SPACE" else a for a in args], *needles)


def test_a_bad_url_in_the_environment_is_answered_first(tmp_path, monkeypatch):
    monkeypatch.setenv("MONGOTUNE_MONGO", "mongodb://[bad")  # env() passes it on
    fast_error(tmp_path, ["launch", "baseline"], "bad MongoDB URL", "[bad")


def test_an_unknown_study_is_answered_by_the_database_without_hyperopt(tmp_path, mongo_url):
    # asking whether a study exists needs pymongo, nothing more
    fast_error(tmp_path, ["resume", "nosuch", "--mongo", mongo_url], "no study named 'nosuch'",
               allowed=("pymongo", "bson"))


def test_the_quick_checks_agree_with_the_libraries_they_stand_in_for():
    """The names and rules checked before the heavy modules load are those the heavy modules enforce."""
    from mongotune.errors import ConfigError
    from mongotune.objectives.launch import ALGORITHM_NAMES, continuous_dimension
    from mongotune.search import grid
    from mongotune.search.algorithms import ALGORITHMS
    from mongotune.search.spaces import build

    assert ALGORITHM_NAMES == tuple(ALGORITHMS)
    spaces = [{"a": {"hp": "choice", "options": [1, 2]}, "b": {"hp": "quniform", "low": 0, "high": 4, "q": 1}},
              {"a": {"hp": "randint", "low": 0, "high": 3}, "b": {"hp": "qloguniform", "low": 1, "high": 8, "q": 1}},
              {"a": {"hp": "uniform", "low": 0, "high": 1}},
              {"a": {"hp": "choice", "options": [{"k": 1}, {"k": {"hp": "normal", "mu": 0, "sigma": 1}}]}},
              {"n": {"nested": {"hp": "lognormal", "mu": 0, "sigma": 1, "label": "own"}}},
              {"q": {"hp": "qnormal", "mu": 0, "sigma": 1, "q": 1}}, {"c": 3}]
    for space in spaces:
        found = continuous_dimension(space)
        try:
            grid.check(build(space))
        except ConfigError as exc:
            assert found and repr(found[0]) in str(exc), (space, found, exc)
        else:
            assert found is None, (space, found)


def test_every_built_in_space_needs_grid_points():
    """`launch MODEL --algo grid` without --grid-points is refused before Keras loads (objectives.keras_launch):
    true only as long as every built-in model's every space has a continuous dimension."""
    from mongotune.errors import ConfigError
    from mongotune.models import available_models, get_model
    from mongotune.models._registry import zoo_names
    from mongotune.search import grid

    assert zoo_names() == available_models()
    for name in available_models():
        model = get_model(name)
        for shape in [(8, 8, 1), (28, 28, 1), (32, 32, 3), (128, 128, 1), (128, 128, 3)]:
            for augment in (False, True):
                try:
                    space = model.space(shape, augment=augment)
                except ConfigError:  # images this model cannot take
                    continue
                with pytest.raises(ConfigError, match="continuous dimension"):
                    grid.check(space)


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
