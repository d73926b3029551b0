"""Commands that look at or act on a study: status, studies, leaderboard, requeue, final."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from ._common import JsonOpt, MongoOpt, _mongo, _setup_logging, _user_errors, app, err, fmt, lit, out, print_json
from .progress import best_text, progress_table


def _describe(st) -> str:
    from ..objectives import describe

    pruner = (st.pruner or {}).get("kind")
    return f"{describe(st)}, {st.algo}" + (f", {pruner} pruning" if pruner else "")


def _seed(st) -> int | None:
    """The study's seed (rerun it exactly with ``launch --seed N``); None where mongotune does not seed it."""
    from ..errors import ConfigError
    from ..objectives import objective_kind

    try:
        return st.seed if objective_kind(st).seeded else None
    except ConfigError:
        return st.seed


def _front_lines(several: dict) -> list[str]:
    """The front as ``status`` prints it: its size, then one line per member (at most FRONT_LINES)."""
    if not several:
        return []
    from ..store.pareto import constraint_text

    lines = []
    if several["constraints"]:
        lines.append(f"constraints: {', '.join(constraint_text(c) for c in several['constraints'])}; "
                     f"{several['infeasible']} finished trial(s) infeasible (break one)")
    if len(several["objectives"]) > 1:
        front = several["front"]
        lines.append(f"Pareto front: {len(front)} trial(s)" + (":" if front else ""))
        for m in front[:FRONT_LINES]:
            lines.append(f"  trial {m['tid']}: " + ", ".join(f"{k}={fmt(v)}" for k, v in m["values"].items()))
        if len(front) > FRONT_LINES:
            lines.append(f"  ... and {len(front) - FRONT_LINES} more (mongotune leaderboard --pareto)")
    return lines


FRONT_LINES = 10  # members of the front `status` lists


def _stored(db, st) -> dict | None:
    """What the study's artifact store holds (this host's directory for a local store); None if it cannot say."""
    from .. import paths
    from ..store.artifacts import ArtifactError, open_store

    try:
        store = open_store(st.artifact_store, db, st.name, paths.artifacts_dir())
        objects = store.list()
    except (ArtifactError, OSError):
        return None
    return {"store": store.kind, "objects": len(objects), "bytes": sum(o.size for o in objects)}


@app.command()
def status(name: str = typer.Argument(..., help="Study name."), mongo: Optional[str] = MongoOpt,
           as_json: bool = JsonOpt):
    """Counts by outcome, the best trial, running trials with worker, heartbeat and progress."""
    with _user_errors(), _mongo(mongo) as url:
        from ..report.leaderboard import front_summary
        from ..store import open_client
        from ..store.progress import snapshot
        from ..store.studies import StudyStore
        from ..store.trialdoc import TrialStore
        from ..store.workers import WorkerRegistry

        client, db, parsed = open_client(url)
        try:
            trials = TrialStore(db, db[parsed.collection])
            st = StudyStore(db).resolve(name, trials)
            snap = snapshot(trials, WorkerRegistry(db), st)
            several = front_summary(trials, st) if st.metrics or st.constraints else {}
            stored = _stored(db, st)
        finally:
            client.close()
    if as_json:
        print_json({**snap.as_dict(), "status": st.status, "objective": st.kind, "algo": st.algo,
                    "pruner": st.pruner, "metric": st.metric, "seed": _seed(st), **several, "artifacts": stored})
        return
    seed = _seed(st)
    out.print(Text.assemble("study ", (str(st.name), "bold"), f": {_describe(st)}, status {st.status}"
                            + (f", seed {seed}" if seed is not None else "")))
    out.print(progress_table(snap))
    if snap.best_params is not None:
        out.print(lit(f"best: {best_text(snap)}, loss {snap.best_loss:.5g}: "
                      + json.dumps(snap.best_params, default=str)))
    for line in _front_lines(several):
        out.print(lit(line))
    if stored:
        out.print(lit(f"artifacts: {stored['objects']} objects, {stored['bytes'] / 2**20:.1f} MiB "
                      f"({stored['store']} store)"))
    if snap.running:
        t = Table(title="running trials")
        for col in ("tid", "attempt", "worker", "gpu", "step", "heartbeat age", "progress"):
            t.add_column(col)
        for r in snap.running:
            age = "-" if r["heartbeat_age_s"] is None else f"{r['heartbeat_age_s']:.1f}s"
            prog = dict(r.get("progress") or {})
            last = prog.pop("last_output", None)
            ptxt = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in prog.items())
            if last:
                ptxt = (ptxt + "; " if ptxt else "") + f"last output: {last}"
            t.add_row(lit(r["tid"]), lit(r["attempt"]), lit(r["worker"]), lit(r["gpu"]), lit(fmt(r.get("step"))), age,
                      lit(ptxt))
        out.print(t)


@app.command()
def studies(mongo: Optional[str] = MongoOpt, as_json: bool = JsonOpt):
    """List studies with their progress and best result."""
    with _user_errors(), _mongo(mongo) as url:
        from ..store import open_client
        from ..store.studies import StudyStore
        from ..store.trialdoc import TrialStore

        client, db, parsed = open_client(url)
        try:
            trials = TrialStore(db, db[parsed.collection])
            store = StudyStore(db)
            rows = [(s, trials.counts(s.exp_key), _best(trials, s)) for s in store.list() + store.experiments(trials)]
        finally:
            client.close()
    if as_json:
        print_json([{"name": s.name, "objective": s.kind, "algo": s.algo, "status": s.status,
                     "max_evals": s.max_evals, "counts": c.as_dict(), "best": b, "metric": s.metric,
                     "created": s.created} for s, c, b in rows])
        return
    t = Table(title="studies")
    for col in ("name", "what", "status", "done", "pruned", "failed", "best", "created"):
        t.add_column(col)
    for s, c, b in rows:
        best = "-"
        if b:
            best = (f"{s.metric.get('name')} {b['metric']:.4g}" if b["metric"] is not None
                    else f"loss {b['loss']:.5g}") + f" (trial {b['tid']})"
        t.add_row(lit(s.name), lit(_describe(s)), lit(s.status), lit(f"{c.finished}/{s.max_evals}"), str(c.pruned),
                  str(c.failed + c.error), lit(best), lit(str(s.created)[:19]))
    out.print(t)


def _best(trials, study) -> dict | None:
    """The study's best trial (the store's one rule) as ``studies`` shows it."""
    rec = trials.best(study.exp_key)
    if rec is None:
        return None
    return {"tid": rec.tid, "loss": rec.loss, "metric": rec.metric_value(str(study.metric.get("name") or "loss")),
            "pruned": rec.outcome == "pruned", "params": rec.param_values}


def _constraints_text(summary: dict) -> str:
    """``; constraints params<=2e+06`` for a study that has them (and how many trials break one)."""
    from ..store.pareto import constraint_text

    constraints = summary.get("constraints") or []
    if not constraints:
        return ""
    broken = f", {summary['infeasible']} infeasible" if "infeasible" in summary else ""
    return f"; constraints {', '.join(constraint_text(c) for c in constraints)}{broken}"


@app.command()
def leaderboard(name: str = typer.Argument(..., help="Study name."), mongo: Optional[str] = MongoOpt,
                top: int = typer.Option(10, help="How many trials."),
                pruned: bool = typer.Option(False, "--pruned", help="Rank pruned trials too."),
                pareto: bool = typer.Option(False, "--pareto", help="The whole Pareto front instead: the trials "
                                            "that ran to their end, meet every constraint and that no other "
                                            "such trial beats in every objective."),
                as_json: bool = JsonOpt):
    """The best trials of a study with their params and metrics (or its Pareto front)."""
    with _user_errors(), _mongo(mongo) as url:
        from ..report.leaderboard import leaderboard as board

        summary, rows = board(url, name, top, include_pruned=pruned, pareto=pareto)
    if as_json:
        print_json({**summary, "trials": rows})
        return
    from ..report.leaderboard import board_lines

    c = summary["counts"]
    metric = str(summary["metric"].get("name") or "loss")
    goal = "higher" if summary["metric"].get("goal") == "max" else "lower"
    out.print(lit(f"leaderboard of {name}: {metric}, {goal} is better" if not pareto else
                  f"Pareto front of {name}: {summary['front']} trial(s), objectives "
                  + ", ".join(f"{o['name']} ({o['goal']})" for o in summary.get("objectives") or [summary["metric"]])))
    out.print(lit(f"{c['ok']} ok, {c['pruned']} pruned, {c['failed'] + c['error']} failed, {c['running']} running"
                  + _constraints_text(summary)))
    lines = board_lines(rows, metric, out.width)
    for line in lines or ["no finished trial yet"]:
        out.print(lit(line), overflow="ignore", crop=False)


@app.command()
def requeue(name: str = typer.Argument(..., help="Study name."),
            tid: Optional[int] = typer.Option(None, help="Only this trial (running or errored)."),
            mongo: Optional[str] = MongoOpt):
    """Put a study's running trials (or one trial) back in the queue."""
    with _user_errors(), _mongo(mongo) as url:
        from ..errors import ConfigError
        from ..store import open_client
        from ..store.studies import StudyStore
        from ..store.trialdoc import TrialStore

        client, db, parsed = open_client(url)
        try:
            trials = TrialStore(db, db[parsed.collection])
            tids = trials.requeue(StudyStore(db).resolve(name, trials).exp_key, tid, "operator")
        finally:
            client.close()
        if tid is not None and not tids:
            raise ConfigError(f"study {name!r} has no running or errored trial {tid}")
    out.print(f"requeued {len(tids)} trial(s): {tids}" if tids else "nothing to requeue")


@app.command()
def final(name: str = typer.Argument(..., help="Study name."), mongo: Optional[str] = MongoOpt,
          trial: Optional[int] = typer.Option(None, help="Trial id, any successful one, e.g. a member of the "
                                             "Pareto front (leaderboard --pareto); default: the best."),
          out_dir: Optional[Path] = typer.Option(None, "--out", help="Output folder "
                                                 "(default $MONGOTUNE_HOME/artifacts/NAME/final)."),
          allow_user_code: bool = typer.Option(False, "--allow-user-code", help="Import the study's --model-fn "
                                               "function (code named by the database).")):
    """Retrain the best configuration on train+val, test once, write reports and the model."""
    _setup_logging()
    with _user_errors(), _mongo(mongo) as url:
        from ..report.final import plan_final

        plan = plan_final(url, name, trial, out_dir, allow_user_code=allow_user_code)  # a bad name or trial fails here, before TensorFlow loads
        from .._quiet import import_keras_quietly

        import_keras_quietly()
        from ..report.final import run_final

        summary = run_final(plan, progress=lambda m: err.print(f"[dim]{m}[/]"))
    out.print(lit(summary["report_text"]))
    out.print(f"test accuracy [bold]{summary['test_accuracy']:.4f}[/] (trial {summary['tid']}, "
              f"{summary['epochs']} epochs on {summary['train_images']} images)")
    for key in ("model_path", "report_path", "confusion_matrix_path"):
        out.print(lit(f"{key.replace('_path', '').replace('_', ' ')}: {summary[key]}"))
