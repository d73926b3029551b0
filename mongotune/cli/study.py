"""Study commands: launch, resume, status, studies, leaderboard, requeue, final."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Optional

import typer
from rich.live import Live
from rich.table import Table

from ..errors import UserError
from ._common import MongoOpt, _mongo, _setup_logging, _user_errors, app, err, out

def _progress_table(snap) -> Table:
    c = snap.counts
    t = Table(title=f"study {snap.name}", show_header=True, header_style="bold")
    for col in ("done", "ok", "failed", "running", "queued", "workers", "best loss", "elapsed"):
        t.add_column(col)
    best = "-" if snap.best_loss is None else f"{snap.best_loss:.5g} (trial {snap.best_tid})"
    t.add_row(f"{snap.finished}/{snap.max_evals}", str(c.get("ok", 0)), str(c.get("failed", 0) + c.get("error", 0)),
              str(c.get("running", 0)), str(c.get("queued", 0)), str(snap.live_workers), best,
              f"{snap.elapsed_s:.0f}s")
    return t


def _drive(url: str, name: str, workers: int, quiet: bool = False):
    from ..pool.coordinator import Coordinator
    from ..pool.local import LocalPool

    coord = Coordinator(url)
    pool = LocalPool(url, workers, study=name).start() if workers > 0 else None
    stop = threading.Event()
    try:
        if quiet or not out.is_terminal:
            last = {"done": -1}

            def progress(snap):
                if snap.finished != last["done"]:
                    last["done"] = snap.finished
                    best = "-" if snap.best_loss is None else f"{snap.best_loss:.5g}"
                    out.print(f"[{snap.elapsed_s:6.0f}s] {snap.finished}/{snap.max_evals} done, "
                              f"{snap.counts['running']} running, {snap.counts['queued']} queued, "
                              f"{snap.live_workers} workers, best loss {best}", highlight=False)

            try:
                snap = coord.run(name, progress=progress, stop=stop)
            except KeyboardInterrupt:
                stop.set()
                raise
        else:
            with Live(console=out, refresh_per_second=4) as live:
                try:
                    snap = coord.run(name, progress=lambda s: live.update(_progress_table(s)), stop=stop)
                except KeyboardInterrupt:
                    stop.set()
                    raise
    finally:
        if pool:
            pool.stop()
        coord.close()
    return snap


def _report_done(snap, name, loss_kind: str = "neg_val_accuracy"):
    if snap.best_loss is None:
        out.print(f"study {name}: {snap.finished}/{snap.max_evals} trials finished; no successful trial yet")
        return
    out.print(f"study [bold]{name}[/]: {snap.finished}/{snap.max_evals} trials finished "
              f"({snap.counts['ok']} ok, {snap.counts['failed'] + snap.counts['error']} failed) "
              f"in {snap.elapsed_s:.1f}s")
    out.print(f"best loss {snap.best_loss:.5g} (trial {snap.best_tid})", highlight=False)
    if snap.best_loss < 0 and loss_kind in ("neg_val_accuracy", "neg_val_accuracy_squared"):
        acc = -snap.best_loss if snap.best_loss > -1.0001 else float("nan")
        if loss_kind == "neg_val_accuracy_squared":
            acc = acc ** 0.5
        out.print(f"best validation accuracy: [bold]{acc:.4f}[/]")
    out.print("best params: " + json.dumps(snap.best_params, default=str), highlight=False)


@app.command()
def launch(
    model: str = typer.Argument(..., help="Model to tune: baseline, convstrix, vggstrix, hyperresnet."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name (default: MODEL-DATASET)."),
    dataset: Optional[str] = typer.Option(None, help="digits, fashion_mnist, mnist, cifar10, cifar100, folder, "
                                          "npz (default: the model's recipe, see `mongotune recipes`)."),
    max_evals: Optional[int] = typer.Option(None, "--max-evals", help="Number of trials (default: the recipe's, "
                                            "else 20)."),
    algo: str = typer.Option("tpe", help="tpe, rand or anneal."),
    mongo: Optional[str] = MongoOpt,
    workers: int = typer.Option(0, help="Start this many local worker processes for the study."),
    space: Optional[Path] = typer.Option(None, help="JSON search-space file (default: the model's own)."),
    augment: bool = typer.Option(False, "--augment", help="Also search online augmentation (flip, crop, "
                                 "rotation, translation, probability)."),
    size: Optional[int] = typer.Option(None, help="Resize images to SIZE x SIZE (default: the recipe's for its "
                                       "dataset, else native, enlarged to what the model needs)."),
    channels: Optional[int] = typer.Option(None, help="1 or 3 channels (default: the recipe's for its dataset, "
                                           "else native, RGB where the model needs it)."),
    interpolation: Optional[str] = typer.Option(None, help="Resizing: area, linear, cubic, lanczos, nearest "
                                                "(default: the recipe's, else area)."),
    source: Optional[str] = typer.Option(None, help="Offline dataset path (directory or file)."),
    val_fraction: Optional[float] = typer.Option(None, help="Fraction of train held out for validation "
                                                 "(default: the recipe's for its dataset, else 0.1)."),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs per trial (default: the recipe's)."),
    patience: Optional[int] = typer.Option(None, help="Early-stopping patience in epochs (default: the recipe's)."),
    loss: Optional[str] = typer.Option(None, help="neg_val_accuracy, neg_val_accuracy_squared or val_loss "
                                       "(default: the recipe's)."),
    max_train_samples: Optional[int] = typer.Option(None, help="Train on at most this many samples per trial."),
    weights: Optional[str] = typer.Option(None, help="vggstrix: 'imagenet' or a local VGG19 no-top .h5 path "
                                          "(default: the recipe's, imagenet)."),
    artifacts: Optional[str] = typer.Option(None, help="Artifact root (default $MONGOTUNE_HOME/artifacts)."),
    mixed_precision: str = typer.Option("auto", "--mixed-precision",
                                        help="auto (on with a GPU), on or off: mixed_float16 training."),
    xla: str = typer.Option("auto", help="auto (on with a GPU), on or off: XLA-compiled training steps."),
    lease: float = typer.Option(60.0, help="Seconds without heartbeat before a trial is requeued."),
    max_attempts: int = typer.Option(3, help="Expired leases before a trial is failed."),
    startup_trials: Optional[int] = typer.Option(None, "--startup-trials", help="TPE: random trials before it "
                                                 "models the results (default: hyperopt's 20)."),
    queue_spare: Optional[int] = typer.Option(None, "--queue-spare", help="Trials queued beyond the idle "
                                              "workers (default: a third of the live workers, at least 1)."),
    seed: int = typer.Option(0, help="Seed of the search and of the data split."),
    objective: str = typer.Option("keras", hidden=True),
    options: Optional[str] = typer.Option(None, hidden=True, help="JSON options for the objective."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Plain progress lines instead of a live table."),
):
    """Create a study and run it: hyperopt's fmin queues trials, workers train them."""
    _setup_logging()
    from .. import paths
    from ..pool.coordinator import Coordinator
    from ..search.spaces import load_space_file
    from ..store.studies import Study, Training

    with _user_errors():
        given = {"dataset": dataset, "size": size, "channels": channels, "interpolation": interpolation,
                 "val_fraction": val_fraction, "source": source, "seed": seed, "epochs": epochs,
                 "patience": patience, "loss": loss, "weights": weights, "max_evals": max_evals}
        if objective == "keras":
            from .._quiet import import_keras_quietly

            import_keras_quietly()
            from ..models.recipes import check_launch_inputs, resolve_launch
            from .data import _progress

            settings = resolve_launch(model, given)
            ds_dict, weights, max_evals = settings.dataset, settings.weights, settings.max_evals
            epochs, patience, loss = settings.epochs, settings.patience, settings.loss
        else:  # the pool's own objectives: no model, no recipe
            from ..data import DataSpec

            ds_dict = DataSpec.from_dict({k: v for k, v in given.items() if v is not None and k in
                                          ("size", "channels", "interpolation", "val_fraction", "source", "seed")}
                                         | {"name": dataset or "digits"}).to_dict()
            max_evals = 20 if max_evals is None else max_evals
            epochs = 50 if epochs is None else epochs
            patience = 5 if patience is None else patience
            loss = loss or "neg_val_accuracy"
        dataset = ds_dict["name"]
        training = Training(epochs=epochs, patience=patience, loss=loss, max_train_samples=max_train_samples,
                            weights=weights, artifacts=artifacts or str(paths.artifacts_dir()), seed=seed,
                            mixed_precision=mixed_precision, xla=xla)
        st = Study(name=study or f"{model}-{dataset}", model=model, dataset=ds_dict, max_evals=max_evals,
                   algo=algo, space=load_space_file(space) if space else None, objective=objective, augment=augment,
                   training=training, lease_s=lease, max_attempts=max_attempts, queue_spare=queue_spare,
                   startup_trials=startup_trials, seed=seed,
                   options=json.loads(options) if options else {})
        st.validate()
        if mongo:
            from ..store import parse_mongo_url

            parse_mongo_url(mongo)  # a bad URL fails before anything is downloaded
        if objective == "keras":
            with _progress() as progress:  # the data and the weights are here, or one error line
                check_launch_inputs(settings, progress=progress)
            for notice in settings.notices:
                err.print(f"note: {notice}", highlight=False, soft_wrap=True)
        with _mongo(mongo) as url:
            coord = Coordinator(url)
            coord.create(st)
            coord.close()
            out.print(f"study [bold]{st.name}[/] created on {_redacted(url)}: {model} on {dataset}, "
                      f"{max_evals} trials, {algo}", highlight=False)
            snap = _drive(url, st.name, workers, quiet)
        _report_done(snap, st.name, st.training.loss)


def _redacted(url: str) -> str:
    from ..store import redact

    return redact(url)


@app.command()
def resume(name: str = typer.Argument(..., help="Study name."), mongo: Optional[str] = MongoOpt,
           workers: int = typer.Option(0, help="Start this many local worker processes."),
           max_evals: Optional[int] = typer.Option(None, "--max-evals", help="Raise the study's budget."),
           quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Continue an interrupted study up to its max evals (nothing is run twice)."""
    _setup_logging()
    from ..pool.coordinator import Coordinator

    with _user_errors(), _mongo(mongo) as url:
        coord = Coordinator(url)
        st = coord.studies.get(name)
        if max_evals is not None:
            if max_evals < 1:
                raise UserError(f"--max-evals must be a positive integer, got {max_evals}")
            coord.studies.update(name, max_evals=max_evals)
        coord.close()
        snap = _drive(url, name, workers, quiet)
        _report_done(snap, st.name, st.training.loss)


# ---------------------------------------------------------------- inspection
@app.command()
def status(name: str = typer.Argument(..., help="Study name."), mongo: Optional[str] = MongoOpt):
    """Counts by state, best loss and params, running trials with worker and heartbeat."""
    from ..pool.coordinator import Coordinator

    with _user_errors(), _mongo(mongo) as url:
        coord = Coordinator(url)
        st = coord.studies.get(name)
        snap = coord.snapshot(name)
        coord.close()
    out.print(f"study [bold]{st.name}[/]: {st.model} on {st.dataset.get('name')}, {st.algo}, status {st.status}")
    out.print(_progress_table(snap))
    if snap.best_params is not None:
        out.print(f"best loss {snap.best_loss:.5g} (trial {snap.best_tid}): "
                  + json.dumps(snap.best_params, default=str), highlight=False)
    if snap.running:
        t = Table(title="running trials")
        for col in ("tid", "attempt", "worker", "gpu", "heartbeat age", "progress"):
            t.add_column(col)
        for r in snap.running:
            age = "-" if r["heartbeat_age_s"] is None else f"{r['heartbeat_age_s']:.1f}s"
            prog = r.get("progress") or {}
            ptxt = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in prog.items())
            t.add_row(str(r["tid"]), str(r["attempt"]), str(r["worker"]), str(r["gpu"]), age, ptxt)
        out.print(t)


@app.command()
def studies(mongo: Optional[str] = MongoOpt):
    """List studies."""
    from ..pool.coordinator import Coordinator

    with _user_errors(), _mongo(mongo) as url:
        coord = Coordinator(url)
        rows = [(s, coord.snapshot(s.name)) for s in coord.studies.list()]
        coord.close()
    t = Table(title="studies")
    for col in ("name", "model", "dataset", "algo", "status", "done", "best loss", "created"):
        t.add_column(col)
    for s, snap in rows:
        t.add_row(s.name, s.model, str(s.dataset.get("name")), s.algo, s.status, f"{snap.finished}/{s.max_evals}",
                  "-" if snap.best_loss is None else f"{snap.best_loss:.5g}", str(s.created)[:19])
    out.print(t)


@app.command()
def leaderboard(name: str = typer.Argument(..., help="Study name."), mongo: Optional[str] = MongoOpt,
                top: int = typer.Option(10, help="How many trials.")):
    """The best trials of a study with their params and metrics."""
    from ..report.leaderboard import leaderboard as board

    with _user_errors(), _mongo(mongo) as url:
        rows = board(url, name, top)
    t = Table(title=f"leaderboard of {name}")
    for col in ("rank", "tid", "loss", "val acc", "epochs", "s/epoch", "params"):
        t.add_column(col)
    for i, r in enumerate(rows, 1):
        t.add_row(str(i), str(r["tid"]), f"{r['loss']:.5g}", _fmt(r.get("val_accuracy")), _fmt(r.get("epochs")),
                  _fmt(r.get("seconds_per_epoch")), json.dumps(r["params"], default=str))
    out.print(t)


def _fmt(v):
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@app.command()
def requeue(name: str = typer.Argument(..., help="Study name."),
            tid: Optional[int] = typer.Option(None, help="Only this trial (running or errored)."),
            mongo: Optional[str] = MongoOpt):
    """Put a study's running trials (or one trial) back in the queue."""
    from ..pool.coordinator import Coordinator

    with _user_errors(), _mongo(mongo) as url:
        coord = Coordinator(url)
        tids = coord.requeue(name, tid)
        coord.close()
    out.print(f"requeued {len(tids)} trial(s): {tids}" if tids else "nothing to requeue")


@app.command()
def final(name: str = typer.Argument(..., help="Study name."), mongo: Optional[str] = MongoOpt,
          trial: Optional[int] = typer.Option(None, help="Trial id (default: the best)."),
          out_dir: Optional[Path] = typer.Option(None, "--out", help="Output folder "
                                                 "(default $MONGOTUNE_HOME/artifacts/NAME/final).")):
    """Retrain the best configuration on train+val, test once, write reports and the model."""
    _setup_logging()
    from .._quiet import import_keras_quietly

    import_keras_quietly()
    from ..report.final import run_final

    with _user_errors(), _mongo(mongo) as url:
        summary = run_final(url, name, trial, out_dir, progress=lambda m: err.print(f"[dim]{m}[/]"))
    out.print(summary["report_text"], highlight=False)
    out.print(f"test accuracy [bold]{summary['test_accuracy']:.4f}[/] (trial {summary['tid']}, "
              f"{summary['epochs']} epochs on {summary['train_images']} images)")
    for key in ("model_path", "report_path", "confusion_matrix_path"):
        out.print(f"{key.replace('_path', '').replace('_', ' ')}: {summary[key]}", highlight=False)


