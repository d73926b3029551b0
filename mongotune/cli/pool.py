"""Pool commands: worker, workers."""

from __future__ import annotations

import os
from typing import Optional

import typer
from rich.table import Table

from ._common import MongoOpt, _mongo, _setup_logging, _user_errors, app, err, out

@app.command()
def worker(mongo: Optional[str] = MongoOpt,
           gpu: Optional[str] = typer.Option(None, help="GPU index to pin (sets CUDA_VISIBLE_DEVICES); 'none' = CPU."),
           study: Optional[str] = typer.Option(None, help="Only run trials of this study."),
           idle_timeout: Optional[float] = typer.Option(None, help="Leave after this many idle seconds."),
           max_trials: Optional[int] = typer.Option(None, help="Leave after this many trials."),
           artifacts: Optional[str] = typer.Option(None, help="Artifact root override for this host."),
           verbose: bool = typer.Option(False, "--verbose", "-v")):
    """Join the pool: reserve trials, train, report; stays until stopped."""
    if gpu is not None:  # before anything can import TensorFlow
        os.environ["CUDA_VISIBLE_DEVICES"] = "" if gpu.lower() in ("none", "cpu", "-1") else gpu
    _setup_logging(verbose)
    from ..pool.worker import Worker, WorkerConfig, install_signal_handlers

    with _user_errors(), _mongo(mongo) as url:
        w = Worker(WorkerConfig(url=url, study=study, gpu=gpu, idle_timeout=idle_timeout, max_trials=max_trials,
                                artifacts=artifacts))
        install_signal_handlers(w)
        reason = w.run()
    err.print(f"worker stopped ({reason}) after {w.trials_done} trial(s)")


@app.command()
def workers(mongo: Optional[str] = MongoOpt,
            all_: bool = typer.Option(False, "--all", help="Include stopped and lost workers.")):
    """Live workers: host, pid, GPU, current trial, heartbeat age."""
    from ..report.workers import list_workers

    with _user_errors(), _mongo(mongo) as url:
        rows = list_workers(url, include_gone=all_)
    t = Table(title="workers")
    for col in ("worker", "host", "pid", "gpu", "study", "state", "current trial", "done", "heartbeat age"):
        t.add_column(col)
    for r in rows:
        cur = r.get("current") or {}
        t.add_row(r["_id"], r["host"], str(r["pid"]), str(r.get("gpu")), str(r.get("study") or "any"), r["state"],
                  f"{cur.get('study')}#{cur.get('tid')}" if cur else "-", str(r.get("trials_done", 0)),
                  f"{r['heartbeat_age_s']:.1f}s" if r.get("heartbeat_age_s") is not None else "-")
    out.print(t)


