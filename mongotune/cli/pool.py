"""Pool commands: ``worker`` (join the pool) and ``workers`` (who is in it)."""

from __future__ import annotations

import os
from typing import List, Optional

import typer
from rich.table import Table

from ._common import JsonOpt, MongoOpt, _check_url, _mongo, _setup_logging, _user_errors, app, err, lit, out, print_json


@app.command()
def worker(mongo: Optional[str] = MongoOpt,
           gpu: Optional[str] = typer.Option(None, help="GPU index to pin (sets CUDA_VISIBLE_DEVICES); 'none' = CPU."),
           study: Optional[str] = typer.Option(None, help="Only run trials of this study."),
           idle_timeout: Optional[float] = typer.Option(None, min=0, help="Leave after this many idle seconds."),
           max_trials: Optional[int] = typer.Option(None, min=1, help="Leave after this many trials."),
           artifacts: Optional[str] = typer.Option(None, help="This host's artifact root (default "
                                                   "$MONGOTUNE_ARTIFACTS, else $MONGOTUNE_HOME/artifacts)."),
           allow_root: List[str] = typer.Option([], "--allow-root", help="A directory whose files studies may "
                                                "name (dataset sources, weights, a shared artifact root); "
                                                "repeatable; also $MONGOTUNE_ALLOWED_ROOTS."),
           allow_user_code: bool = typer.Option(False, "--allow-user-code", help="Also run studies that run the "
                                                "user's own code (commands, model functions)."),
           verbose: bool = typer.Option(False, "--verbose", "-v")):
    """Join the pool: reserve trials, train, report; stays until stopped."""
    from ..devices import cuda_visible_devices

    with _user_errors():  # bad input answers before anything heavy loads or a server starts
        if gpu is not None:  # before anything can import TensorFlow
            os.environ["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices(gpu)
        _check_url(mongo)
    _setup_logging(verbose)
    with _user_errors(), _mongo(mongo) as url:
        from ..pool.worker import Worker, WorkerConfig, install_signal_handlers

        w = Worker(WorkerConfig(url=url, study=study, gpu=gpu, idle_timeout=idle_timeout, max_trials=max_trials,
                                artifacts=artifacts, allowed_roots=list(allow_root), allow_user_code=allow_user_code))
        install_signal_handlers(w)
        reason = w.run()
    err.print(f"worker stopped ({reason}) after {w.trials_done} trial(s)")


@app.command()
def workers(mongo: Optional[str] = MongoOpt,
            all_: bool = typer.Option(False, "--all", help="Include stopped and lost workers."),
            as_json: bool = JsonOpt):
    """Live workers: host, pid, GPU, current trial, heartbeat age."""
    with _user_errors(), _mongo(mongo) as url:
        from ..report.workers import list_workers

        rows = list_workers(url, include_gone=all_)
    if as_json:
        print_json(rows)
        return
    t = Table(title="workers")
    for col in ("worker", "host", "pid", "gpu", "study", "state", "current trial", "done", "heartbeat age"):
        t.add_column(col)
    for r in rows:
        cur = r.get("current") or {}
        t.add_row(lit(r["_id"]), lit(r.get("host")), lit(r.get("pid")), lit(r.get("gpu")),
                  lit(r.get("study") or "any"), lit(r["state"]),
                  lit(f"{cur.get('study')}#{cur.get('tid')}" if cur else "-"), lit(r.get("trials_done", 0)),
                  f"{r['heartbeat_age_s']:.1f}s" if r.get("heartbeat_age_s") is not None else "-")
    out.print(t)
