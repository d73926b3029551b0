"""Pruning on a cheap learning-curve problem: epochs to a target, many seeds, mongotune against Optuna.

The problem is ``lc_problem.CurveProblem``: the final validation errors of a
public table (HPOBench, NAS-Bench-201) with synthetic curves that cross.  A
run simulates an asynchronous pool of ``--workers`` workers in one process
(each epoch takes the configuration's epoch time; the earliest to end goes
first): a free worker asks the search for a trial, trains it epoch by epoch,
reports each epoch and asks the pruner, and stops when the pruner says so or
at the last epoch.  It ends when the pool has spent ``--budget`` x epochs per
trial epochs in all.

* mongotune arms: the search is a hyperopt ``suggest`` function (``make_suggest``,
  driven as the coordinator drives it: pending trials are in ``trials``), the
  pruner is mongotune's own (``make_pruner``) reading the study's curves as a
  worker does; a pruned trial's result is what a worker records (``loss`` =
  its best reading, ``pruned``, ``pruned_at``, the curve).
* Optuna arms: ``TPESampler`` (its defaults: multivariate, constant liar) with
  ``SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)`` or none,
  through ask/tell with ``trial.report`` / ``should_prune``.

Measured per run, for each target (the final error that the best 2 %, 1 % and
0.5 % of the table's configurations reach): the epochs the pool had spent when
some trial's (noise-free) error first reached it, or "never" within the budget;
the regret of the best trial that ran to its last epoch (the model one would
ship); trials started and pruned.  Medians and quartiles over seeds; a run that
never reached a target counts as worse than any that did.

    python bench/bench_pruning_lc.py --arms default,pruned,optuna-tpe,optuna-tpe+sh   # the defaults vs Optuna
    python bench/bench_pruning_lc.py --quick               # smoke run
    python bench/bench_pruning_lc.py --arms default,default+asha --seeds 40
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from lc_problem import TABLES, CurveProblem  # noqa: E402

TARGETS = (0.02, 0.01, 0.005)
from mongotune.search.defaults import PRUNER  # noqa: E402

ARMS = {  # name: (kind, search or sampler, pruner spec)
    "default": ("mongotune", {}, None),
    "pruned": ("mongotune", {}, dict(PRUNER)),  # what `mongotune launch` does when told nothing
    "default+asha": ("mongotune", {}, {"kind": "asha", "min_epochs": 1, "reduction_factor": 3}),
    "default+asha3": ("mongotune", {}, {"kind": "asha", "min_epochs": 3, "reduction_factor": 3}),
    "default+hyperband": ("mongotune", {}, {"kind": "hyperband", "min_epochs": 1, "reduction_factor": 3}),
    "default+median": ("mongotune", {}, {"kind": "median", "min_epochs": 2}),
    "default+envelope": ("mongotune", {}, {"kind": "envelope", "min_epochs": 1}),
    "default+envelope1": ("mongotune", {}, {"kind": "envelope", "min_epochs": 1, "top": 1}),
    "bohb-asha": ("mongotune", {"fidelity": "rung"}, {"kind": "asha", "min_epochs": 1, "reduction_factor": 3}),
    "bohb-hyperband": ("mongotune", {"fidelity": "rung"}, {"kind": "hyperband", "min_epochs": 1,
                                                            "reduction_factor": 3}),
    "optuna-tpe": ("optuna", {}, None),
    "optuna-tpe+sh": ("optuna", {}, {"kind": "sh", "min_resource": 1, "reduction_factor": 3}),
}


@dataclass
class Running:
    """A trial on a simulated worker."""

    handle: object  # tid (mongotune) or optuna trial
    config: dict
    step: int = 0
    readings: list = field(default_factory=list)


@dataclass
class Tally:
    """What one run measures."""

    epochs: int = 0
    trials: int = 0
    pruned: int = 0
    reached: dict = field(default_factory=dict)  # target fraction -> epochs spent when reached
    best_complete: float = math.inf  # true final error of the best trial that ran to the end

    def epoch_done(self, problem: CurveProblem, run: Running, targets: dict) -> None:
        self.epochs += 1
        err = problem.true_error(run.config, run.step)
        for frac, value in targets.items():
            if frac not in self.reached and err <= value:
                self.reached[frac] = self.epochs


# ---------------------------------------------------------------- the pool
def simulate(problem: CurveProblem, search, workers: int, budget_epochs: int, seed: int) -> Tally:
    """Run the asynchronous pool until ``budget_epochs`` epochs are spent; ``search`` is a Mongotune or Optuna arm."""
    targets = {f: problem.target(f) for f in TARGETS}
    tally = Tally()
    events: list = []
    seq = 0
    for w in range(workers):
        run = search.start()
        tally.trials += 1
        heapq.heappush(events, (problem.epoch_time(run.config), seq, run))
        seq += 1
    while events and tally.epochs < budget_epochs:
        now, _, run = heapq.heappop(events)
        run.step += 1
        value = problem.observed_error(run.config, run.step, seed)
        run.readings.append(value)
        tally.epoch_done(problem, run, targets)
        last = run.step >= problem.epochs
        if not last and search.report(run, value):
            tally.pruned += 1
            search.finish(run, pruned=True)
        elif last:
            tally.best_complete = min(tally.best_complete, problem.true_error(run.config, run.step))
            search.finish(run, pruned=False)
        else:
            heapq.heappush(events, (now + problem.epoch_time(run.config), seq, run))
            seq += 1
            continue
        if tally.epochs < budget_epochs:
            run = search.start()
            tally.trials += 1
            heapq.heappush(events, (now + problem.epoch_time(run.config), seq, run))
            seq += 1
    return tally


class MongotuneArm:
    """mongotune's search (a hyperopt suggest function) and pruner, as the coordinator and workers use them."""

    def __init__(self, problem: CurveProblem, options: dict, pruner_spec: dict | None, seed: int):
        from hyperopt import Trials, base, hp
        from hyperopt.pyll import scope

        from mongotune.search.algorithms import DEFAULT, make_suggest
        from mongotune.search.pruners import StudyCurves, make_pruner

        space = {k: (hp.choice(k, v) if k in problem.categorical else scope.int(hp.quniform(k, -0.49, len(v) - 0.51, 1)))
                 for k, v in problem.choices.items()}
        self.algo = make_suggest(options.get("algo", DEFAULT), {k: v for k, v in options.items() if k != "algo"})
        self.domain = base.Domain(lambda p: 0.0, space)
        self.trials = Trials()
        self.rng = np.random.default_rng(seed)
        self.pruner = make_pruner(pruner_spec, problem.epochs)
        self.curves = StudyCurves()
        self.docs: dict[int, dict] = {}
        self.next_tid = 0

    def start(self) -> Running:
        from hyperopt.base import JOB_STATE_RUNNING

        from mongotune.search.dims import assignment_of
        from mongotune.search.pruners import TrialCurve

        tid = self.next_tid
        self.next_tid += 1
        (doc,) = self.algo([tid], self.domain, self.trials, int(self.rng.integers(2**31 - 1)))
        doc["state"] = JOB_STATE_RUNNING
        self.trials.insert_trial_docs([doc])
        self.trials.refresh()
        self.docs[tid] = self.trials._dynamic_trials[-1]
        self.curves.trials[tid] = TrialCurve(tid)
        return Running(tid, {k: int(v) for k, v in assignment_of(doc).items()})

    def report(self, run: Running, value: float) -> bool:
        self.curves.trials[run.handle].values[run.step] = value
        if self.pruner.name == "none" or not self.pruner.decides_at(run.handle, run.step):
            return False
        return self.pruner.decision(self.curves, run.handle, run.step)[0]

    def finish(self, run: Running, pruned: bool) -> None:
        from hyperopt.base import JOB_STATE_DONE

        doc = self.docs[run.handle]
        result = {"status": "ok", "loss": min(run.readings)}  # a worker's loss: the best reading
        if pruned:
            result.update(pruned=True, pruned_at=run.step)
        doc.update(state=JOB_STATE_DONE, result=result,
                   curve=[{"step": i + 1, "value": v} for i, v in enumerate(run.readings)])
        self.curves.trials[run.handle].finished = True
        self.curves.trials[run.handle].pruned = pruned
        self.trials.refresh()


class OptunaArm:
    """Optuna's TPESampler (defaults) with its successive-halving pruner or none, through ask/tell."""

    def __init__(self, problem: CurveProblem, options: dict, pruner_spec: dict | None, seed: int):
        import optuna

        pruner = optuna.pruners.NopPruner()
        if pruner_spec:
            pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=pruner_spec["min_resource"],
                                                            reduction_factor=pruner_spec["reduction_factor"])
        self.problem = problem
        self.study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, **options), pruner=pruner)

    def start(self) -> Running:
        p = self.problem
        trial = self.study.ask()
        config = {k: (v.index(trial.suggest_categorical(k, v)) if k in p.categorical
                      else trial.suggest_int(k, 0, len(v) - 1)) for k, v in p.choices.items()}
        return Running(trial, config)

    def report(self, run: Running, value: float) -> bool:
        run.handle.report(value, run.step)
        return run.handle.should_prune()

    def finish(self, run: Running, pruned: bool) -> None:
        import optuna

        if pruned:
            self.study.tell(run.handle, state=optuna.trial.TrialState.PRUNED)
        else:
            self.study.tell(run.handle, min(run.readings))


def one_run(job: tuple) -> dict:
    table, arm, seed, workers, budget, epochs = job
    import optuna

    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    problem = CurveProblem(table, epochs)
    kind, options, pruner = ARMS[arm]
    cls = MongotuneArm if kind == "mongotune" else OptunaArm
    t0 = time.process_time()
    tally = simulate(problem, cls(problem, options, pruner, seed), workers, budget * epochs, seed)
    return {"table": table, "arm": arm, "seed": seed, "epochs": tally.epochs, "trials": tally.trials,
            "pruned": tally.pruned, "reached": {str(k): v for k, v in tally.reached.items()},
            "regret": tally.best_complete - problem.optimum, "cpu_s": time.process_time() - t0}


# ---------------------------------------------------------------- summary
def summarise(rows: list, tables: list, arms: list, budget_epochs: int) -> dict:
    """Medians and quartiles per table and arm; "never" is any value above the budget (inf in the JSON)."""
    out: dict = {}
    for table in tables:
        for arm in arms:
            rs = [r for r in rows if r["table"] == table and r["arm"] == arm]
            entry = {"runs": len(rs), "trials": float(np.median([r["trials"] for r in rs])),
                     "pruned": float(np.median([r["pruned"] for r in rs])),
                     "regret": float(np.median([r["regret"] for r in rs]))}
            for frac in TARGETS:
                got = [r["reached"].get(str(frac)) for r in rs]
                arr = np.array([2.0 * budget_epochs if v is None else v for v in got], dtype=float)
                q = [float(x) if x <= budget_epochs else math.inf for x in np.percentile(arr, [25, 50, 75])]
                entry[f"top{frac:g}"] = {"median": q[1], "q25": q[0], "q75": q[2],
                                         "reached": sum(v is not None for v in got)}
            out.setdefault(table, {})[arm] = entry
    return out


def _fmt(x: float) -> str:
    return "never" if math.isinf(x) else f"{x:.0f}"


def report(summary: dict, arms: list) -> None:
    for table, by_arm in summary.items():
        print(f"\n{table}")
        for arm in arms:
            e = by_arm[arm]
            cells = "  ".join(f"top {f * 100:g}%: {_fmt(e[f'top{f:g}']['median'])} "
                              f"[{_fmt(e[f'top{f:g}']['q25'])}, {_fmt(e[f'top{f:g}']['q75'])}] "
                              f"({e[f'top{f:g}']['reached']}/{e['runs']})" for f in TARGETS)
            print(f"  {arm:20s} {cells}  trials {e['trials']:.0f} pruned {e['pruned']:.0f} "
                  f"regret {e['regret']:.4f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", default="hpobench-vehicle,hpobench-phoneme,nb201-cifar10",
                    help=f"comma-separated, from: {', '.join(TABLES)}")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from: {', '.join(ARMS)}")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=27, help="epochs of a trial that is not pruned")
    ap.add_argument("--budget", type=int, default=60, help="the pool's budget, in full trials' worth of epochs")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--quick", action="store_true", help="2 tables, 3 seeds, budget 20")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    tables = [t for t in args.tables.split(",") if t]
    arms = [a for a in args.arms.split(",") if a]
    bad = [t for t in tables if t not in TABLES] + [a for a in arms if a not in ARMS]
    if bad:
        print(f"error: unknown table or arm: {', '.join(bad)}", file=sys.stderr)
        return 2
    seeds, budget = args.seeds, args.budget
    if args.quick:
        tables, seeds, budget = tables[:2], 3, 20
    jobs = [(t, a, s, args.workers, budget, args.epochs) for t in tables for s in range(seeds) for a in arms]
    t0 = time.monotonic()
    with mp.Pool(args.jobs) as pool:
        rows = []
        for i, row in enumerate(pool.imap_unordered(one_run, jobs), 1):
            rows.append(row)
            if i % 20 == 0 or i == len(jobs):
                print(f"  {i}/{len(jobs)} runs ({time.monotonic() - t0:.0f} s)", flush=True)
    summary = summarise(rows, tables, arms, budget * args.epochs)
    report(summary, arms)
    import optuna

    result = {"date": time.strftime("%Y-%m-%d", time.gmtime()),
              "command": " ".join(["python", "bench/bench_pruning_lc.py", *(argv if argv is not None else sys.argv[1:])]),
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "optuna": optuna.__version__},
              "config": {"tables": tables, "arms": {a: ARMS[a] for a in arms}, "seeds": seeds, "workers": args.workers,
                         "epochs": args.epochs, "budget_epochs": budget * args.epochs, "targets": TARGETS},
              "summary": summary, "runs": rows, "wall_s": time.monotonic() - t0}
    out = Path(args.out or HERE / "results" / ("pruning-lc-quick.json" if args.quick else "pruning-lc.json"))
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
