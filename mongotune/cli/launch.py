"""Commands that drive a study: ``launch`` and ``resume``."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

import typer
from rich.live import Live
from rich.markup import escape

from ..errors import ConfigError
from ..search.defaults import ALGORITHM as DEFAULT_ALGORITHM
from ..search.defaults import PRUNER as DEFAULT_PRUNER
from ._common import MongoOpt, _mongo, _setup_logging, _user_errors, app, err, out
from .progress import progress_line, progress_table

SEARCH_HELP = ("Search algorithm. Default optuna-tpe: Optuna's multivariate TPE that never proposes a point "
               "twice; on ten public benchmark tables it ends with lower regret than Optuna's own default TPE, "
               "alone and with 4 or 16 parallel workers (README, 'Search algorithms'). Also: tpe (hyperopt's "
               "TPE, as the seed studies used), rand, anneal, grid (every combination; the study ends when it "
               "is exhausted) or gp (Gaussian-process Bayesian optimisation).")


PRUNER_HELP = ("Stop hopeless trials early: asha, hyperband, median or none. Default: "
               + DEFAULT_PRUNER["kind"] + " (rungs at epoch " + str(DEFAULT_PRUNER["min_epochs"]) + " x "
               + str(DEFAULT_PRUNER["reduction_factor"]) + "^k): with the default search it reached the benchmarks' "
               "targets in fewer epochs than without pruning and than Optuna's TPE with successive halving "
               "(README, 'Pruning').")


def drive(url: str, name: str, workers: int, quiet: bool = False, *, wait: bool = False,
          allow_user_code: bool = False, allowed_roots: list[str] | None = None):
    """Run the study's coordinator (and ``workers`` local workers) with live progress."""
    from ..pool.coordinator import Coordinator
    from ..pool.local import LocalPool

    coord = Coordinator(url)
    # the workers get the whole URL, password included (from $MONGOTUNE_MONGO_PASSWORD or a file too),
    # through a file only this user can read
    pool = LocalPool(coord.parsed.client_uri, workers, study=name, allow_user_code=allow_user_code,
                     allowed_roots=allowed_roots).start() if workers > 0 else None
    stop = threading.Event()

    def waiting(msg: str) -> None:
        err.print(f"[yellow]{escape(msg)}[/]", highlight=False)

    try:
        if quiet or not out.is_terminal:
            last = {"done": -1}

            def progress(snap):
                if snap.finished != last["done"]:
                    last["done"] = snap.finished
                    out.print(progress_line(snap), highlight=False, markup=False)

            try:
                snap = coord.run(name, progress=progress, stop=stop, wait=wait, on_wait=waiting)
            except KeyboardInterrupt:
                stop.set()
                raise
        else:
            with Live(console=out, refresh_per_second=4) as live:
                try:
                    snap = coord.run(name, progress=lambda s: live.update(progress_table(s)), stop=stop,
                                     wait=wait, on_wait=waiting)
                except KeyboardInterrupt:
                    stop.set()
                    raise
    finally:
        if pool:
            pool.stop()
        coord.close()
    return snap


def report_done(snap, name):
    c = snap.counts
    out.print(f"study [bold]{escape(name)}[/]: {snap.finished}/{snap.max_evals} trials finished "
              f"({c['ok']} ok, {c['pruned']} pruned, {c['failed'] + c['error']} failed) in {snap.elapsed_s:.1f}s")
    if snap.best_tid is None:
        out.print("no successful trial yet")
        return
    out.print(f"best loss {snap.best_loss:.5g} (trial {snap.best_tid})", highlight=False)
    metric = snap.metric.get("name")
    if snap.best_metric is not None and metric != "loss":
        label = "validation accuracy" if metric == "val_accuracy" else metric
        out.print(f"best {escape(label)}: [bold]{snap.best_metric:.4f}[/]")
    import json

    out.print("best params: " + json.dumps(snap.best_params, default=str), highlight=False, markup=False)


def search_settings(algo: str, startup_trials: int | None, grid_points: int | None, acquisition: str | None,
                    kappa: float | None, constant_liar: bool | None = None) -> dict:
    """The study's ``search`` setting from the options given (the others stay the algorithm's defaults)."""
    from ..search.algorithms import ALGORITHMS, check_options

    if algo not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {algo!r}; choose from: {', '.join(ALGORITHMS)}")
    if startup_trials is not None and startup_trials < 1:
        raise ConfigError(f"--startup-trials must be >= 1, got {startup_trials}")
    flags = {"startup_trials": "--startup-trials", "grid_points": "--grid-points", "acquisition": "--acquisition",
             "kappa": "--kappa", "constant_liar": "--no-constant-liar"}
    given = {k: v for k, v in (("startup_trials", startup_trials), ("grid_points", grid_points),
                               ("acquisition", acquisition), ("kappa", kappa),
                               ("constant_liar", constant_liar)) if v is not None}
    for key in given:
        if key not in ALGORITHMS[algo][1]:
            users = [a for a, (_, spec) in ALGORITHMS.items() if key in spec]
            raise ConfigError(f"{flags[key]} applies to --algo {' and '.join(users)}, not --algo {algo}")
    return {"algo": algo, **check_options(algo, given)}


def pruner_settings(pruner: str | None, min_epochs: int | None, reduction_factor: int | None,
                    min_trials: int | None, max_epochs: int | None) -> dict | None:
    """The study's ``pruner`` setting; ``pruner`` None: the default pruner (``search.defaults.PRUNER``)."""
    from ..search.defaults import PRUNER
    from ..search.pruners import validate_pruner

    spec: dict = dict(PRUNER) if pruner is None else {"kind": pruner}
    for key, value in (("min_epochs", min_epochs), ("reduction_factor", reduction_factor),
                       ("min_trials", min_trials), ("max_epochs", max_epochs)):
        if value is not None:
            spec[key] = value
    return validate_pruner(spec, max_epochs)


def own_code(model: str | None, command: str | None, model_fn: str | None, augment: bool, **command_options) -> bool:
    """Check which kind of study the options ask for; True when its trials run the user's code."""
    if command is not None and model_fn is not None:
        raise ConfigError("give --command or --model-fn, not both")
    if model is not None and (command is not None or model_fn is not None):
        raise ConfigError(f"give a MODEL or {'--command' if command is not None else '--model-fn'}, not both")
    if model is None and command is None and model_fn is None:
        raise ConfigError("give a MODEL to tune (see `mongotune recipes`), --command or --model-fn")
    if command is None:
        given = [f"--{k.replace('_', '-')}" for k, v in command_options.items() if v]
        if given:
            raise ConfigError(f"{', '.join(given)} only apply to --command studies")
    if augment and model is None:
        raise ConfigError("--augment applies to the built-in models")
    return command is not None or model_fn is not None


def check_search(st) -> None:
    """The study's search can work its space (grid: a finite one), before anything is written."""
    from ..pool.coordinator import resolve_space, suggest_for

    suggest_for(st, resolve_space(st))


@app.command()
def launch(
    model: Optional[str] = typer.Argument(None, help="Model to tune: baseline, convstrix, vggstrix, hyperresnet "
                                          "(or --command, or --model-fn)."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name (default: MODEL-DATASET)."),
    dataset: Optional[str] = typer.Option(None, help="digits, fashion_mnist, mnist, cifar10, cifar100, folder, "
                                          "npz (default: the model's recipe, see `mongotune recipes`)."),
    max_evals: Optional[int] = typer.Option(None, "--max-evals", help="Number of trials (default: the recipe's, "
                                            "else 20)."),
    algo: str = typer.Option(DEFAULT_ALGORITHM, help=SEARCH_HELP),
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
    keep_models: int = typer.Option(3, "--keep-models", help="Keep the saved models of the best K trials; the "
                                    "others' are deleted as the study goes (params, history, curves stay)."),
    artifacts: Optional[str] = typer.Option(None, help="Optional shared artifact root for the study; each "
                                            "worker uses it only if it is among its --allow-root roots."),
    mixed_precision: str = typer.Option("auto", "--mixed-precision",
                                        help="auto (on with a GPU), on or off: mixed_float16 training."),
    xla: str = typer.Option("auto", help="auto (on with a GPU), on or off: XLA-compiled training steps."),
    pruner: Optional[str] = typer.Option(None, help=PRUNER_HELP),
    min_epochs: Optional[int] = typer.Option(None, "--min-epochs", help="Pruning: epochs before the first "
                                             "decision (asha/hyperband: the first rung). Default 1."),
    reduction_factor: Optional[int] = typer.Option(None, "--reduction-factor", help="asha/hyperband: keep the "
                                                   "best 1/N at each rung (N >= 2, default 3)."),
    min_trials: Optional[int] = typer.Option(None, "--min-trials", help="Pruning warm-up: trials that must "
                                             "reach a step before any is stopped there (median 4, asha 1)."),
    grid_points: Optional[int] = typer.Option(None, "--grid-points", help="grid: values per continuous "
                                              "dimension."),
    acquisition: Optional[str] = typer.Option(None, help="gp: ei (expected improvement, default) or ucb."),
    kappa: Optional[float] = typer.Option(None, help="gp with ucb: exploration weight."),
    constant_liar: Optional[bool] = typer.Option(None, "--constant-liar/--no-constant-liar", help="optuna-tpe, "
                                                 "tpe, gp: count queued and running trials as bad (worst for the "
                                                 "TPEs, the mean for gp) so idle workers get distinct suggestions "
                                                 "(default on)."),
    lease: float = typer.Option(60.0, help="Seconds without heartbeat before a trial is requeued."),
    max_attempts: int = typer.Option(3, help="Expired leases before a trial is failed."),
    startup_trials: Optional[int] = typer.Option(None, "--startup-trials", help="optuna-tpe, tpe, gp: random "
                                                 "trials before the model takes over (default: optuna-tpe and gp "
                                                 "10, tpe 20)."),
    queue_spare: Optional[int] = typer.Option(None, "--queue-spare", help="Trials queued beyond the idle "
                                              "workers (default: a third of the live workers, at least 1)."),
    seed: int = typer.Option(0, help="Seed of the search and of the data split."),
    wait: bool = typer.Option(False, "--wait", help="If another coordinator runs this study, wait for it."),
    command: Optional[str] = typer.Option(None, "--command", rich_help_panel="Your own code",
                                          help="Tune a command instead of a model: 'python train.py --lr {lr}' "
                                          "({name} or :name: placeholders, filled from the --params)."),
    param: list[str] = typer.Option([], "--param", rich_help_panel="Your own code",
                                    help="A searched param of --command (repeat): lr:1e-4:1e-1:log, "
                                    "layers:1:6:int, drop:0:0.5:q=0.05, opt:adam,sgd, epochs:20."),
    metric: Optional[str] = typer.Option(None, "--metric", rich_help_panel="Your own code",
                                         help="The metric --command prints (name=value, name: value or JSON lines)."),
    goal: str = typer.Option("max", "--goal", rich_help_panel="Your own code",
                             help="Is a higher (max) or lower (min) --metric better."),
    metric_agg: str = typer.Option("last", "--metric-agg", rich_help_panel="Your own code",
                                   help="A trial's value from its readings: last, max, min or mean."),
    timeout: Optional[str] = typer.Option(None, "--timeout", rich_help_panel="Your own code",
                                          help="Fail a --command trial that runs longer (90s, 15m, 2h)."),
    workdir: Optional[str] = typer.Option(None, "--workdir", rich_help_panel="Your own code",
                                          help="Working directory of --command (default: each trial's own)."),
    model_fn: Optional[str] = typer.Option(None, "--model-fn", rich_help_panel="Your own code",
                                           help="Your Keras model: package.module:function taking (params, "
                                           "input_shape, num_classes); needs --space."),
    objective: str = typer.Option("keras", hidden=True),
    options: Optional[str] = typer.Option(None, hidden=True, help="JSON options for the objective."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Plain progress lines instead of a live table."),
):
    """Create a study and run it: hyperopt's fmin queues trials, workers train them."""
    _setup_logging()
    import json
    import os

    with _user_errors():
        # everything that can be checked without TensorFlow or a server, first (and the options and the
        # space file before numpy and pymongo load: a typo is answered in well under a second)
        from ..search.spaces import load_space_file

        user_code = own_code(model, command, model_fn, augment, param=param, metric=metric, timeout=timeout,
                             workdir=workdir)
        space_json = load_space_file(space) if space else None
        search = search_settings(algo, startup_trials, grid_points, acquisition, kappa, constant_liar)

        from ..data import DataSpec
        from ..store.studies import Study

        if mongo:
            from ..store import parse_mongo_url

            parse_mongo_url(mongo)  # a bad URL fails before anything is downloaded
        roots: list[str] = []
        notices: list[str] = []
        what = None
        if command is not None:
            from ..objectives.command import command_study

            if study is None:
                raise ConfigError("a command study needs a name: give --study NAME")
            if not metric:
                raise ConfigError("a command study needs --metric NAME (what the command prints, e.g. val_accuracy)")
            max_evals = 20 if max_evals is None else max_evals
            prune = pruner_settings(pruner, min_epochs, reduction_factor, min_trials, None)
            st = command_study(study, max_evals, command, metric=metric, params=param, space=space_json, goal=goal,
                               aggregate=metric_agg, timeout=timeout, workdir=workdir, search=search, pruner=prune,
                               lease_s=lease, max_attempts=max_attempts, queue_spare=queue_spare, seed=seed,
                               artifacts_root=artifacts)
            what = "command " + " ".join(st.objective["command"])
            check_search(st)
        elif model_fn is not None:
            from ..objectives.keras_trial import Training
            from ..objectives.model_fn import model_fn_study
            from .data import _progress

            given = {"size": size, "channels": channels, "interpolation": interpolation,
                     "val_fraction": val_fraction, "source": source}
            ds = DataSpec.from_dict({"name": dataset or "digits", "seed": seed,
                                     **{k: v for k, v in given.items() if v is not None}})
            training = Training(epochs=epochs or 50, patience=5 if patience is None else patience,
                                loss=loss or "neg_val_accuracy", max_train_samples=max_train_samples, seed=seed,
                                mixed_precision=mixed_precision, xla=xla)
            max_evals = 20 if max_evals is None else max_evals
            prune = pruner_settings(pruner, min_epochs, reduction_factor, min_trials, training.epochs)
            with _progress() as progress:
                st = model_fn_study(study or f"{model_fn.rpartition(':')[2]}-{ds.name}", max_evals, model_fn, ds,
                                    training, space=space_json, progress=progress, search=search, pruner=prune,
                                    lease_s=lease, max_attempts=max_attempts, queue_spare=queue_spare, seed=seed,
                                    artifacts_root=artifacts)
            what = f"{model_fn} on {ds.name}"
            check_search(st)
            roots = [os.path.dirname(os.path.abspath(os.path.expanduser(source)))] if source else []
        elif objective == "keras":
            from ..models.recipes import check_launch_inputs, resolve_launch
            from ..objectives.keras_launch import keras_objective, keras_study
            from ..objectives.keras_trial import Training

            given = {"dataset": dataset, "size": size, "channels": channels, "interpolation": interpolation,
                     "val_fraction": val_fraction, "source": source, "seed": seed, "epochs": epochs,
                     "patience": patience, "loss": loss, "weights": weights, "max_evals": max_evals}
            from .._quiet import import_keras_quietly

            import_keras_quietly()  # the model registry needs Keras; its start-up chatter stays off the terminal
            settings = resolve_launch(model, given)
            training = Training(epochs=settings.epochs, patience=settings.patience, loss=settings.loss,
                                max_train_samples=max_train_samples, weights=settings.weights, seed=seed,
                                mixed_precision=mixed_precision, xla=xla, keep_models=keep_models)
            obj = keras_objective(model, DataSpec.from_dict(settings.dataset), training, augment=augment)
            max_evals, dataset, epochs = settings.max_evals, settings.dataset["name"], settings.epochs
            prune = pruner_settings(pruner, min_epochs, reduction_factor, min_trials, epochs)
            core = dict(search=search, pruner=prune, lease_s=lease, max_attempts=max_attempts,
                        queue_spare=queue_spare, seed=seed, artifacts_root=artifacts)
            name = study or f"{model}-{dataset}"
            st = keras_study(name, max_evals, obj, space=space_json, **core)
            from ..pool.coordinator import resolve_space, suggest_for

            suggest_for(st, resolve_space(st))  # the search can work this space (grid: finite), before downloads
            from .data import _progress

            with _progress() as progress:  # the data and the weights are here, or one error line
                check_launch_inputs(settings, progress=progress)
            notices = list(settings.notices)
            roots = [os.path.dirname(os.path.abspath(os.path.expanduser(p)))
                     for p in (source, settings.weights if settings.weights not in (None, "imagenet") else None)
                     if p]
        else:  # the pool's own objectives: no model, no recipe
            dataset = dataset or "-"
            max_evals = 20 if max_evals is None else max_evals
            prune = pruner_settings(pruner, min_epochs, reduction_factor, min_trials, None)
            opts = json.loads(options) if options else {}
            st = Study(name=study or f"{model}-{objective}", max_evals=max_evals,
                       objective={"kind": objective, **opts}, space=space_json, search=search, pruner=prune,
                       lease_s=lease, max_attempts=max_attempts, queue_spare=queue_spare, seed=seed,
                       artifacts_root=artifacts).validate()
        for notice in notices:
            err.print(f"note: {notice}", highlight=False, soft_wrap=True)
        with _mongo(mongo) as url:
            from ..pool.coordinator import Coordinator
            from ..store import redact

            coord = Coordinator(url)
            try:
                coord.create(st)
            finally:
                coord.close()
            out.print(f"study [bold]{st.name}[/] created on {redact(url)}: {what or f'{model} on {dataset}'}, "
                      f"{max_evals} trials, {algo}" + (f", {prune['kind']} pruning" if prune else ""), highlight=False)
            if algo == "grid":
                from ..search.grid import grid_size
                from ..search.spaces import build

                size = grid_size(build(st.space), search.get("grid_points"))
                if size < max_evals:
                    out.print(f"the grid has {size} points; the study ends when it is exhausted", highlight=False)
            snap = drive(url, st.name, workers, quiet, wait=wait, allowed_roots=roots, allow_user_code=user_code)
        report_done(snap, st.name)


@app.command()
def resume(name: str = typer.Argument(..., help="Study name."), mongo: Optional[str] = MongoOpt,
           workers: int = typer.Option(0, help="Start this many local worker processes."),
           max_evals: Optional[int] = typer.Option(None, "--max-evals", help="Raise the study's budget."),
           wait: bool = typer.Option(False, "--wait", help="If another coordinator runs this study, wait for it."),
           quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Continue an interrupted study up to its max evals (nothing is run twice)."""
    _setup_logging()
    if max_evals is not None and max_evals < 1:
        with _user_errors():
            raise ConfigError(f"--max-evals must be a positive integer, got {max_evals}")
    with _user_errors(), _mongo(mongo) as url:
        from ..objectives import runs_user_code
        from ..pool.coordinator import Coordinator

        coord = Coordinator(url)
        try:
            st = coord.studies.get(name)
            if max_evals is not None:
                # a live coordinator would not see the new budget: refuse now (StudyBusy) unless --wait
                token = None if wait else coord.acquire(name)
                coord.studies.update(name, max_evals=max_evals)
                if token:
                    coord.studies.release_coordinator(name, token)
        finally:
            coord.close()
        snap = drive(url, name, workers, quiet, wait=wait, allow_user_code=runs_user_code(st.objective))
        report_done(snap, st.name)
