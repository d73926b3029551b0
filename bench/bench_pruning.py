"""Time to target: does pruning reach a good model sooner?  TPE alone vs TPE + ASHA / median vs Optuna.

The task is the Keras baseline MLP on scikit-learn's 8x8 digits (offline;
the small-input space ``./dev demo`` searches), every trial at most
``--epochs`` epochs with early stopping (``--patience``), ``--trials``
trials per study, ``--workers`` workers, TPE after ``--startup`` random
trials.  Arms, each run once per seed (the seed is the search's seed and the
data split's, the same for every arm of a seed):

* ``default``, ``pruned``: mongotune's real pool -- ``mongotune launch
  baseline --workers K`` against an embedded server this benchmark starts,
  with the default search and ``--pruner none`` (``default``) or the default
  pruner (``pruned``: no ``--pruner`` flag at all);
* ``tpe``, ``asha``, ``median``: the same with hyperopt's TPE (``--algo
  tpe``) and ``--pruner none|asha|median`` (asha: rungs at 1, 3, 9 epochs,
  reduction factor 3; median: from epoch ``--median-from``, once 4 other
  trials got there), as measured before the default search changed.
* ``optuna``: Optuna's TPESampler (``constant_liar=True``, the same number of
  random start-up trials) with its SuccessiveHalvingPruner (min resource 1,
  reduction factor 3: the same rungs), K worker processes sharing a journal
  file; each trial runs mongotune's own Keras trial code (the same model,
  data, epochs, early stopping) on the same space, reporting every epoch's
  validation accuracy to Optuna.  It trains the study of the first mongotune
  arm of the same seed (same data split), so list one before it.

For each run: every epoch's validation accuracy with its wall-clock time;
"time to target" is the wall time from the study's first trial start until
the first epoch that reads ``--target`` or more, and "epochs to target" is
the number of epochs all workers finished by then.  A run that never
reaches the target ranks after every run that does ("never" in the table).
Reported: medians and min/max over seeds per arm, and the totals (epochs,
wall time, pruned trials, best validation accuracy).

    python bench/bench_pruning.py                  # 5 seeds x 4 arms: 36 minutes on 2 busy cores
    python bench/bench_pruning.py --quick          # 1 seed, 8 trials: smoke run
    python bench/bench_pruning.py --arms tpe,asha --seeds 3

Writes bench/results/pruning.json (pruning-quick.json with --quick), after every run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

OPTUNA_WORKER = "_optuna_worker"
ARMS = ("default", "pruned", "optuna", "tpe", "asha", "median")
MONGOTUNE_ARMS = {  # arm: launch flags (default / pruned: mongotune's default search; pruned: its default pruner)
    "default": ["--pruner", "none"],
    "pruned": [],
    "tpe": ["--algo", "tpe", "--pruner", "none"],
    "asha": ["--algo", "tpe", "--pruner", "asha", "--min-epochs", "1", "--reduction-factor", "3"],
    "median": ["--algo", "tpe", "--pruner", "median"],
}


def _env(home: Path) -> dict:
    env = dict(os.environ)
    env["MONGOTUNE_HOME"] = str(home)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _utc(dt) -> float:
    """A naive-UTC datetime from the database as epoch seconds."""
    return dt.replace(tzinfo=datetime.timezone.utc).timestamp()


# ---------------------------------------------------------------- measuring one run
def to_target(starts: list[float], points: list[tuple[float, int, int, float]], target: float) -> dict:
    """``points``: (time, trial, step, value) of every epoch.  Epochs and seconds until the first reading
    >= target, counted from the first trial's start."""
    t0 = min(starts)
    points = sorted(points)
    hit = next((p for p in points if p[3] >= target), None)
    out = {"total_epochs": len(points), "total_s": round(points[-1][0] - t0, 2) if points else 0.0,
           "best": max((p[3] for p in points), default=None), "reached": hit is not None}
    if hit is not None:
        out["epochs_to_target"] = sum(1 for p in points if p[0] <= hit[0])
        out["s_to_target"] = round(hit[0] - t0, 2)
        out["target_trial"], out["target_step"] = hit[1], hit[2]
    else:  # never reached within the budget: ranked after every run that did (None in the JSON)
        out["epochs_to_target"] = out["s_to_target"] = None
    return out


def measured(starts, points, args, **info) -> dict:
    """The run at the main target, the other targets, and its readings (seconds from the first start)."""
    out = {**info, **to_target(starts, points, args.targets[0])}
    out["other_targets"] = {str(t): to_target(starts, points, t) for t in args.targets[1:]}
    t0 = min(starts)
    out["readings"] = [[round(t - t0, 2), tid, step, round(v, 5)] for t, tid, step, v in sorted(points)]
    return out


def run_mongotune(arm: str, seed: int, args, url: str, home: Path) -> dict:
    import pymongo

    name = f"{arm}-s{seed}"
    pruner = list(MONGOTUNE_ARMS[arm])
    if arm == "median":
        pruner += ["--min-epochs", str(args.median_from)]
    cmd = [sys.executable, "-m", "mongotune", "launch", "baseline", "--dataset", "digits", "--study", name,
           "--mongo", url, "--max-evals", str(args.trials), "--startup-trials", str(args.startup),
           "--workers", str(args.workers), "--epochs", str(args.epochs), "--patience", str(args.patience),
           "--seed", str(seed), "--split-seed", str(seed), "--quiet", *pruner]
    log = home / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t = time.monotonic()
    with open(log, "wb") as fh:
        p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env(home),
                             start_new_session=True)
        try:
            code = p.wait(timeout=args.run_timeout)
        finally:
            if p.poll() is None:  # interrupted or too slow: launch stops the workers it started
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
    launch_s = time.monotonic() - t
    if code != 0:
        raise RuntimeError(f"{name}: launch exited {code}:\n{log.read_text()[-3000:]}")
    db = pymongo.MongoClient(url, serverSelectionTimeoutMS=10000).get_default_database()
    docs = list(db.jobs.find({"exp_key": f"mongotune:{name}"}, projection=["tid", "book_time", "curve", "result"]))
    if len(docs) != args.trials or any((d.get("result") or {}).get("status") != "ok" for d in docs):
        raise RuntimeError(f"{name}: {len(docs)} trials, not all ok:\n{log.read_text()[-3000:]}")
    points, starts = [], []
    for d in docs:
        starts.append(_utc(d["book_time"]))
        latest = d["curve"][-1]["lease"]
        points += [(_utc(p["at"]), d["tid"], p["step"], p["value"]) for p in d["curve"] if p["lease"] == latest]
    return measured(starts, points, args, arm=arm, seed=seed, launch_s=round(launch_s, 1),
                    pruned=sum(1 for d in docs if d["result"].get("pruned")))


def run_optuna(seed: int, args, url: str, home: Path, study: str) -> dict:
    d = home / f"optuna-s{seed}"
    d.mkdir(parents=True, exist_ok=True)
    procs = []
    t = time.monotonic()
    for i in range(args.workers):
        cmd = [sys.executable, __file__, OPTUNA_WORKER, "--dir", str(d), "--mongo", url, "--study", study,
               "--seed", str(seed), "--index", str(i), "--trials", str(args.trials), "--startup", str(args.startup)]
        fh = open(d / f"worker-{i}.log", "wb")
        procs.append((subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=_env(home)), fh))
    try:
        for i, (p, fh) in enumerate(procs):
            code = p.wait(timeout=args.run_timeout)
            fh.close()
            if code != 0:
                raise RuntimeError(f"optuna worker {i} exited {code}:\n{(d / f'worker-{i}.log').read_text()[-3000:]}")
    finally:
        for p, fh in procs:  # only the processes started here
            if p.poll() is None:
                p.kill()
                p.wait()
            fh.close()
    launch_s = time.monotonic() - t
    events = [json.loads(line) for f in sorted(d.glob("events-*.jsonl")) for line in f.read_text().splitlines()]
    starts = [e["t"] for e in events if e["kind"] == "start"]
    points = [(e["t"], e["trial"], e["step"], e["value"]) for e in events if e["kind"] == "epoch"]
    ends = [e for e in events if e["kind"] == "end"]
    if len(starts) != args.trials or len(ends) != args.trials:
        raise RuntimeError(f"optuna s{seed}: {len(starts)} trials started, {len(ends)} ended (expected {args.trials})")
    return measured(starts, points, args, arm="optuna", seed=seed, launch_s=round(launch_s, 1),
                    pruned=sum(1 for e in ends if e["pruned"]))


# ---------------------------------------------------------------- one Optuna worker process
def baseline_small_params(trial) -> dict:
    """One point of the small-input space of mongotune.models.baseline (8x8 digits), asked of an Optuna
    trial: the same names, ranges, steps and choices as the hyperopt space mongotune searches.
    bench_search.py asks its Optuna samplers through this too."""
    from mongotune.models import baseline as B

    low, high = B.SMALL_LEARNING_RATES
    return {
        "batch_size": trial.suggest_categorical("batch_size", B.SMALL_BATCH_SIZES),
        "learning_rate": trial.suggest_float("learning_rate", low, high, log=True),
        "dropout_rate": trial.suggest_float("dropout_rate", 0.0, 0.3, step=0.05),
        "activation": trial.suggest_categorical("activation", B.ACTIVATIONS),
        "num_layers": trial.suggest_int("num_layers", 1, B.SMALL_MAX_LAYERS),
        "layer_size": trial.suggest_categorical("layer_size", B.SMALL_LAYER_SIZES),
        "optimizer": trial.suggest_categorical("optimizer", B.OPTIMIZERS),
    }


def optuna_worker(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    for a in ("--dir", "--mongo", "--study"):
        ap.add_argument(a, required=True)
    for a in ("--seed", "--index", "--trials", "--startup"):
        ap.add_argument(a, type=int, required=True)
    a = ap.parse_args(argv)
    import optuna
    import pymongo
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from mongotune._quiet import import_keras_quietly

    import_keras_quietly()
    from mongotune.errors import TrialPruned
    from mongotune.objectives import TrialContext
    from mongotune.objectives.keras_trial import train_trial
    from mongotune.store.studies import StudyStore

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # the very study the mongotune arms of this seed trained: model, data split, epochs, patience
    study_doc = StudyStore(pymongo.MongoClient(a.mongo).get_default_database()).get(a.study)
    storage = JournalStorage(JournalFileBackend(str(Path(a.dir) / "journal.log")))
    study = optuna.create_study(
        study_name="digits", storage=storage, load_if_exists=True, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=a.seed * 1000 + a.index, n_startup_trials=a.startup,
                                           constant_liar=True),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3, min_early_stopping_rate=0))
    events = open(Path(a.dir) / f"events-{a.index}.jsonl", "a", buffering=1)

    def emit(**e):
        events.write(json.dumps({"t": time.time(), **e}) + "\n")

    def objective(trial):
        params = baseline_small_params(trial)
        emit(kind="start", trial=trial.number)

        def report(step: int, value: float) -> bool:
            emit(kind="epoch", trial=trial.number, step=step, value=value)
            trial.report(value, step)
            return trial.should_prune()

        ctx = TrialContext(tid=trial.number + 1, attempt=0, study=a.study, artifacts_dir=None, report_step=report)
        try:
            result = train_trial(study_doc, params, ctx)
        except TrialPruned:
            emit(kind="end", trial=trial.number, pruned=True)
            raise optuna.TrialPruned() from None
        emit(kind="end", trial=trial.number, pruned=False)
        value = float(result["val_accuracy"])
        return value if math.isfinite(value) else 0.0

    study.optimize(objective, callbacks=[optuna.study.MaxTrialsCallback(a.trials, states=None)])
    events.close()
    return 0


# ---------------------------------------------------------------- summary
def _quantile(xs: list, q: float) -> float:
    """Linear interpolation between order statistics; "never" (inf) wins any interpolation it is part of."""
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    if math.isinf(xs[lo]) or math.isinf(xs[hi]):
        return math.inf
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def spread(values: list) -> dict:
    """median, quartiles, min and max; None (not reached) counts as worse than any value, and is None again here."""
    if not values:
        return {}
    xs = sorted(math.inf if v is None else v for v in values)

    def back(v):
        return None if math.isinf(v) else v

    return {"median": back(_quantile(xs, 0.5)), "q25": back(_quantile(xs, 0.25)), "q75": back(_quantile(xs, 0.75)),
            "min": back(xs[0]), "max": back(xs[-1])}


def summarize(runs: list[dict], arms: list[str]) -> dict:
    out = {}
    for arm in arms:
        rs = [r for r in runs if r["arm"] == arm]
        if not rs:
            continue
        out[arm] = {"seeds": len(rs), "reached": sum(r["reached"] for r in rs),
                    **{k: spread([r[k] for r in rs]) for k in
                       ("epochs_to_target", "s_to_target", "total_epochs", "total_s", "pruned", "best")}}
    ref = "default" if "default" in out else "tpe"  # the search without pruning
    base = out.get(ref)
    for arm, s in out.items():
        if base and arm != ref and None not in (s["epochs_to_target"]["median"], base["epochs_to_target"]["median"]):
            s[f"epochs_ratio_vs_{ref}"] = round(s["epochs_to_target"]["median"] / base["epochs_to_target"]["median"], 3)
            s[f"time_ratio_vs_{ref}"] = round(s["s_to_target"]["median"] / base["s_to_target"]["median"], 3)
    return out


def table(summary: dict, target: float) -> str:
    def mm(s, fmt):
        def f(v):
            return "never" if v is None else format(v, fmt)
        return f"{f(s['median'])} [{f(s['q25'])}, {f(s['q75'])}]"

    lines = [f"target: best validation accuracy >= {target}; median [quartiles] over seeds",
             f"{'arm':8s} {'reached':>8s} {'epochs to target':>22s} {'s to target':>24s} {'total epochs':>20s} "
             f"{'total s':>22s} {'pruned':>14s} {'best val':>24s}"]
    for arm, s in summary.items():
        lines.append(f"{arm:8s} {s['reached']:>4d}/{s['seeds']:<3d} {mm(s['epochs_to_target'], '.0f'):>22s} "
                     f"{mm(s['s_to_target'], '.1f'):>24s} {mm(s['total_epochs'], '.0f'):>20s} "
                     f"{mm(s['total_s'], '.1f'):>22s} {mm(s['pruned'], '.0f'):>14s} {mm(s['best'], '.4f'):>24s}")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == OPTUNA_WORKER:
        return optuna_worker(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--startup", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=9)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--median-from", type=int, default=2, help="median pruner: --min-epochs")
    ap.add_argument("--target", default="0.985,0.97,0.99",
                    help="best validation accuracy to reach; more, comma-separated, are reported too")
    ap.add_argument("--run-timeout", type=float, default=900)
    ap.add_argument("--quick", action="store_true", help="1 seed, 6 trials (3 random), 4 epochs")
    ap.add_argument("--out", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (database, logs)")
    args = ap.parse_args()
    args.targets = [float(t) for t in args.target.split(",")]
    if args.quick:
        args.seeds, args.trials, args.startup, args.epochs = 1, 6, 3, 4
    arms = [a for a in args.arms.split(",") if a]
    bad = [a for a in arms if a not in ARMS]
    if bad:
        print(f"error: unknown arm(s) {', '.join(bad)}; choose from {', '.join(ARMS)}", file=sys.stderr)
        return 2
    ours = [a for a in arms if a != "optuna"]
    if "optuna" in arms and (not ours or arms.index("optuna") < arms.index(ours[0])):
        print("error: the optuna arm trains the study of the first mongotune arm before it (same data split): "
              "list one first", file=sys.stderr)
        return 2
    out_path = Path(args.out or HERE / "results" / ("pruning-quick.json" if args.quick else "pruning.json"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from mongotune.store.embedded import start_server

    tmp = Path(tempfile.mkdtemp(prefix="bench-pruning-"))
    server = start_server(tmp / "db", port=0)
    url = server.url
    runs: list[dict] = []
    started = time.time()

    def write(done: bool):
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps({
            "benchmark": "bench_pruning.py", "date": datetime.date.today().isoformat(), "complete": done,
            "command": " ".join(["python", "bench/bench_pruning.py", *sys.argv[1:]]),
            "machine": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "optuna": _version("optuna"), "hyperopt": _version("hyperopt"), "tensorflow": _version("tensorflow"),
            "task": "baseline MLP on scikit-learn digits (small-input space), val accuracy",
            "settings": {k: getattr(args, k) for k in ("seeds", "first_seed", "trials", "startup", "workers", "epochs",
                                                      "patience", "median_from")},
            "targets": args.targets,
            "arms": arms, "wall_s": round(time.time() - started, 1),
            "summary": summarize(runs, arms),
            "other_targets": {str(t): summarize([{**r, **r["other_targets"][str(t)]} for r in runs], arms)
                              for t in args.targets[1:]},
            "runs": runs}, indent=1))

    try:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for arm in arms:
                home = tmp / "home"
                r = (run_optuna(seed, args, url, home, f"{ours[0]}-s{seed}") if arm == "optuna"
                     else run_mongotune(arm, seed, args, url, home))
                shutil.rmtree(home / "artifacts", ignore_errors=True)
                runs.append(r)
                hit = (f"{r['epochs_to_target']:3d} epochs, {r['s_to_target']:6.1f} s" if r["reached"]
                       else "not reached")
                print(f"seed {seed} {arm:7s} to {args.targets[0]}: {hit} | total {r['total_epochs']:3d} "
                      f"epochs, {r['total_s']:6.1f} s, {r['pruned']:2d} pruned, best {r['best']:.4f} "
                      f"(launch {r['launch_s']:.0f} s)", flush=True)
                write(False)
        write(True)
        print()
        print(table(summarize(runs, arms), args.targets[0]))
        for t in args.targets[1:]:
            print(table(summarize([{**r, **r["other_targets"][str(t)]} for r in runs], arms), t))
        print(f"wrote {out_path}")
    finally:
        server.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    sys.exit(main())
