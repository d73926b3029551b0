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
    obj = st.objective
    what = {"keras": lambda: f"{obj.get('model_fn') or obj.get('model')} on {(obj.get('dataset') or {}).get('name')}",
            "command": lambda: f"command {' '.join(obj.get('command', [])) if isinstance(obj.get('command'), list) else obj.get('command')}"}
    text = what.get(st.kind, lambda: st.kind)()
    pruner = (st.pruner or {}).get("kind")
    return f"{text}, {st.algo}" + (f", {pruner} pruning" if pruner else "")


@app.command()
def status(name: str = typer.Argument(..., help="Study name."), mongo: Optional[str] = MongoOpt,
           as_json: bool = JsonOpt):
    """Counts by outcome, the best trial, running trials with worker, heartbeat and progress."""
    with _user_errors(), _mongo(mongo) as url:
        from ..store import open_client
        from ..store.progress import snapshot
        from ..store.studies import StudyStore
        from ..store.trialdoc import TrialStore
        from ..store.workers import WorkerRegistry

        client, db, parsed = open_client(url)
        try:
            st = StudyStore(db).get(name)
            snap = snapshot(TrialStore(db, db[parsed.collection]), WorkerRegistry(db), st)
        finally:
            client.close()
    if as_json:
        print_json({**snap.as_dict(), "status": st.status, "objective": st.kind, "algo": st.algo,
                    "pruner": st.pruner})
        return
    out.print(Text.assemble("study ", (str(st.name), "bold"), f": {_describe(st)}, status {st.status}"))
    out.print(progress_table(snap))
    if snap.best_params is not None:
        out.print(lit(f"best: {best_text(snap)}, loss {snap.best_loss:.5g}: "
                      + json.dumps(snap.best_params, default=str)))
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
            rows = [(s, trials.counts(s.exp_key)) for s in StudyStore(db).list()]
        finally:
            client.close()
    if as_json:
        print_json([{"name": s.name, "objective": s.kind, "algo": s.algo, "status": s.status,
                     "max_evals": s.max_evals, "counts": c.as_dict(), "best": s.best, "metric": s.metric,
                     "created": s.created} for s, c in rows])
        return
    t = Table(title="studies")
    for col in ("name", "what", "status", "done", "pruned", "failed", "best", "created"):
        t.add_column(col)
    for s, c in rows:
        best = "-"
        if s.best:
            metric = (s.best.get("metric") if isinstance(s.best.get("metric"), (int, float)) else None)
            best = f"{s.metric.get('name')} {metric:.4g}" if metric is not None else f"loss {s.best['loss']:.5g}"
        t.add_row(lit(s.name), lit(_describe(s)), lit(s.status), lit(f"{c.finished}/{s.max_evals}"), str(c.pruned),
                  str(c.failed + c.error), lit(best), lit(str(s.created)[:19]))
    out.print(t)


@app.command()
def leaderboard(name: str = typer.Argument(..., help="Study name."), mongo: Optional[str] = MongoOpt,
                top: int = typer.Option(10, help="How many trials."),
                pruned: bool = typer.Option(False, "--pruned", help="Rank pruned trials too."),
                as_json: bool = JsonOpt):
    """The best trials of a study with their params and metrics."""
    with _user_errors(), _mongo(mongo) as url:
        from ..report.leaderboard import leaderboard as board

        summary, rows = board(url, name, top, include_pruned=pruned)
    if as_json:
        print_json({**summary, "trials": rows})
        return
    c = summary["counts"]
    metric = summary["metric"].get("name", "metric")
    t = Table(title=lit(f"leaderboard of {name} ({c['ok']} ok, {c['pruned']} pruned, "
                        f"{c['failed'] + c['error']} failed, {c['running']} running)"))
    for col in ("rank", "tid", "loss", metric, "epochs", "s/epoch", "params"):
        t.add_column(lit(col))
    for i, r in enumerate(rows, 1):
        tid = f"{r['tid']} (pruned at {r['pruned_at']})" if r["outcome"] == "pruned" else str(r["tid"])
        t.add_row(str(i), lit(tid), lit(f"{r['loss']:.5g}"), lit(fmt(r.get("metric"))), lit(fmt(r.get("epochs"))),
                  lit(fmt(r.get("seconds_per_epoch"))), lit(json.dumps(r["params"], default=str)))
    out.print(t)


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
            st = StudyStore(db).get(name)
            tids = TrialStore(db, db[parsed.collection]).requeue(st.exp_key, tid, "operator")
        finally:
            client.close()
        if tid is not None and not tids:
            raise ConfigError(f"study {name!r} has no running or errored trial {tid}")
    out.print(f"requeued {len(tids)} trial(s): {tids}" if tids else "nothing to requeue")


@app.command()
def final(name: str = typer.Argument(..., help="Study name."), mongo: Optional[str] = MongoOpt,
          trial: Optional[int] = typer.Option(None, help="Trial id (default: the best)."),
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
