"""One small study of every kind, run to its end on one real pool, for the view matrix (test_every_view.py).

Two ``mongotune worker --allow-user-code --gpu none`` processes (CPU workers of
one host, as ``launch --workers 2`` starts them) run the Keras, ``--model-fn``,
command and synthetic studies side by side; a ``mongotune hyperopt-worker``
process runs stock ``hyperopt.fmin`` jobs queued through
``mongotune.store.MongoTrials``.  The Keras, model-fn and command studies are
launched by the real CLI (``mongotune launch``, no local workers), the
synthetic study by the coordinator in this process, the fmin jobs by
``hyperopt.fmin`` in this process.  Each kind is kept small: scikit-learn's
digits for 2 epochs, a Python script that prints its metric at four steps.
"""

from __future__ import annotations

import math
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import cloudpickle

from conftest import SPACE, synthetic_study
from helpers import REPO, db_of, log_text, mongotune, stop, wait_for

PY = sys.executable

# the metric rises step by step and with depth, falls away from lr = 1e-2; the first run anywhere fails
COMMAND_SCRIPT = """
    import argparse, math, os, sys, time
    ap = argparse.ArgumentParser()
    ap.add_argument("--lr", type=float); ap.add_argument("--depth", type=int); ap.add_argument("--opt")
    a = ap.parse_args()
    try:
        os.close(os.open({marker!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        sys.exit("the first run of this study fails on purpose")
    except FileExistsError:
        pass
    base = 0.55 + 0.06 * a.depth - 0.08 * abs(math.log10(a.lr) + 2) + (0.03 if a.opt == "adam" else 0.0)
    for step in range(1, 5):
        time.sleep(0.15)
        print(f"step {{step}} auc={{base * (0.7 + 0.075 * step):.5f}}", flush=True)
"""

MODEL_FN = """
    import keras

    def build_model(params, input_shape, num_classes):
        inputs = keras.Input(shape=input_shape)
        x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 16)(inputs))
        x = keras.layers.Dense(int(params["units"]), activation="relu")(x)
        return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))
"""
MODEL_FN_SPACE = {"units": {"hp": "choice", "options": [8, 16, 32]},
                  "learning_rate": {"hp": "loguniform", "low": 1e-3, "high": 3e-2},
                  "batch_size": {"hp": "choice", "options": [32, 64]}}
STOCK_EXP_KEY = "stock-fmin"


@dataclass
class Kind:
    """A study of one kind as the views should show it."""

    name: str  # the study's name (a stock fmin experiment: its exp_key)
    exp_key: str
    metric: str
    goal: str
    curves: bool = True  # its trials record per-step values
    final: bool = False  # `mongotune final` retrains it
    final_args: list = field(default_factory=list)


KINDS = {
    "keras": Kind("keras", "mongotune:keras", "val_accuracy", "max", final=True),
    "model-fn": Kind("model-fn", "mongotune:model-fn", "val_accuracy", "max", final=True,
                     final_args=["--allow-user-code"]),
    "command": Kind("command", "mongotune:command", "auc", "max"),
    "synthetic": Kind("synthetic", "mongotune:synthetic", "loss", "min"),
    "hyperopt": Kind(STOCK_EXP_KEY, STOCK_EXP_KEY, "loss", "min", curves=False),
}


@dataclass
class Pool:
    url: str
    home: Path
    logs: Path
    user_code: Path
    env: dict


def _user_code(folder: Path) -> None:
    folder.mkdir()
    (folder / "train.py").write_text(textwrap.dedent(COMMAND_SCRIPT.format(marker=str(folder / "failed-once"))))
    (folder / "usermodels.py").write_text(textwrap.dedent(MODEL_FN))
    import json

    (folder / "space.json").write_text(json.dumps(MODEL_FN_SPACE))


def _launches(pool: Pool) -> dict:
    """The three CLI launches, started at once (the workers take trials of all of them)."""
    common = ["--mongo", pool.url, "--algo", "rand", "-q"]
    keras_opts = ["--dataset", "digits", "--epochs", 2, "--patience", 1]
    code = pool.user_code
    args = {
        "keras": ["launch", "baseline", "--study", "keras", "--max-evals", 7, *keras_opts, *common],
        "model-fn": ["launch", "--model-fn", "usermodels:build_model", "--space", code / "space.json",
                     "--study", "model-fn", "--max-evals", 7, *keras_opts, *common],
        "command": ["launch", "--study", "command", "--max-evals", 10,
                    "--command", f"{PY} {code / 'train.py'} --lr {{lr}} --depth {{depth}} --opt {{opt}}",
                    "--param", "lr:1e-3:1e-1:log", "--param", "depth:1:4:int", "--param", "opt:adam,sgd",
                    "--metric", "auc", "--goal", "max", *common],
    }
    return {k: mongotune(*a, log=pool.logs / f"launch-{k}.log", extra_env=pool.env) for k, a in args.items()}


def _stock_objective(args):
    """A stock fmin objective (pickled by value: the hyperopt-worker cannot import this module)."""
    x, lr, opt = args["x"], args["lr"], args["opt"]
    return {"status": "ok", "loss": (x - 0.3) ** 2 + 0.1 * abs(math.log10(lr) + 2) + (0.05 if opt == "sgd" else 0)}


def _stock_fmin(pool: Pool) -> None:
    import numpy as np
    from hyperopt import fmin, hp, rand

    from mongotune.store import MongoTrials

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    base, _, query = pool.url.partition("?")
    trials = MongoTrials(base + "/jobs" + ("?" + query if query else ""), exp_key=STOCK_EXP_KEY)
    space = {"x": hp.uniform("x", -1, 1), "lr": hp.loguniform("lr", math.log(1e-4), math.log(1e-1)),
             "opt": hp.choice("opt", ["adam", "sgd"])}
    fmin(_stock_objective, space, algo=rand.suggest, max_evals=10, trials=trials, max_queue_len=2,
         show_progressbar=False, rstate=np.random.default_rng(3))


def _synthetic(pool: Pool) -> None:
    from mongotune.pool.coordinator import Coordinator

    coord = Coordinator(pool.url)
    try:
        study = synthetic_study("synthetic", 10, space=SPACE, steps=4, sleep_s=0.4)
        study.pruner = {"kind": "asha", "min_epochs": 1, "reduction_factor": 3}
        coord.create(study)
        coord.run("synthetic")
    finally:
        coord.close()


def run_every_kind(url: str, tmp: Path) -> Pool:
    """Run one study of each kind to its end; the workers are stopped before this returns."""
    pool = Pool(url, tmp / "home", tmp / "logs", tmp / "user-code", {})
    pool.logs.mkdir()
    _user_code(pool.user_code)
    pool.env = {"MONGOTUNE_HOME": pool.home, "MONGOTUNE_DATA_DIR": tmp / "data",
                "PYTHONPATH": f"{REPO}:{pool.user_code}"}
    workers = [mongotune("worker", "--mongo", url, "--allow-user-code", "--gpu", "none",
                         log=pool.logs / f"worker{i}.log", extra_env=pool.env) for i in range(2)]
    stock = mongotune("hyperopt-worker", "--mongo", url, "--exp-key", STOCK_EXP_KEY, "--allow-pickle",
                      "--poll-interval", "0.2", "--gpu", "none", "--workdir", tmp / "fmin-wd",
                      log=pool.logs / "hyperopt-worker.log", extra_env=pool.env)
    launches = {}
    try:
        launches = _launches(pool)
        _synthetic(pool)
        _stock_fmin(pool)
        t0 = time.monotonic()
        for kind, proc in launches.items():
            code = proc.wait(max(1.0, 900 - (time.monotonic() - t0)))
            assert code == 0, (kind, log_text(pool.logs / f"launch-{kind}.log")[-3000:])
    finally:
        for proc in launches.values():
            stop(proc)
        codes = [stop(w) for w in [*workers, stock]]
    assert codes == [0, 0, 0], [log_text(p)[-2000:] for p in sorted(pool.logs.glob("*worker*.log"))]
    db = db_of(url)
    wait_for(lambda: db.workers.count_documents({"status": {"$ne": "stopped"}}) == 0, 30, what="workers stopped")
    db.client.close()
    return pool
