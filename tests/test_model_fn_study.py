"""--model-fn on the real pool: a user's Keras model, from a module outside the package, trained by workers."""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from helpers import REPO, db_of, log_text, mongotune, run_cli, stop

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

USER_MODULE = """
    import keras

    def build_model(params, input_shape, num_classes):
        inputs = keras.Input(shape=input_shape)
        x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 16)(inputs))
        x = keras.layers.Dense(int(params["units"]), activation="relu", name="users_own_layer")(x)
        return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x), name="users_model")
"""
SPACE = {"units": {"hp": "choice", "options": [16, 32]},
         "learning_rate": {"hp": "loguniform", "low": 3e-3, "high": 3e-2},
         "batch_size": {"hp": "choice", "options": [32]}}


@pytest.fixture
def user_code(tmp_path):
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "usermodels.py").write_text(textwrap.dedent(USER_MODULE))
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    return folder, space


# A --model-fn study trained by the pool, its trials and `final` (refused without --allow-user-code, then run):
# tests/report/test_every_view.py, on the study of this kind that the view matrix runs.


def test_a_worker_that_cannot_import_it_fails_the_trial_clearly(mongo_url, tmp_path, user_code):
    folder, space = user_code
    log = tmp_path / "w.log"
    # this worker consents to user code, but the module is not on its path
    worker = mongotune("worker", "--mongo", mongo_url, "--allow-user-code", log=log)
    try:
        res = run_cli("launch", "--model-fn", "usermodels:build_model", "--space", space, "--dataset", "digits",
                      "--study", "noimport", "--max-evals", 1, "--epochs", 1, "--mongo", mongo_url, "-q",
                      timeout=600, PYTHONPATH=f"{REPO}{os.pathsep}{folder}")
    finally:
        code = stop(worker)
    assert res.returncode == 0, res.stdout + res.stderr
    assert code == 0, log_text(log)[-2000:]
    (doc,) = list(db_of(mongo_url).jobs.find({"exp_key": "mongotune:noimport"}))
    failure = doc["result"]["failure"]
    assert failure["kind"] == "model-fn"
    assert "cannot import usermodels (ModuleNotFoundError" in failure["reason"] and "PYTHONPATH" in failure["reason"]


@pytest.mark.parametrize("ref, says", [
    ("usermodels:nope", "usermodels has no nope"),
    ("nosuchmodule:build_model", "cannot import nosuchmodule"),
    ("usermodels", "expected package.module:function"),
])
def test_launch_refuses_a_model_fn_that_does_not_import(mongo_url, user_code, ref, says):
    folder, space = user_code
    res = run_cli("launch", "--model-fn", ref, "--space", space, "--dataset", "digits", "--study", "x",
                  "--mongo", mongo_url, timeout=300, PYTHONPATH=f"{REPO}{os.pathsep}{folder}")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert says in lines[0]
    assert db_of(mongo_url).studies.count_documents({}) == 0
