"""Commands that drive a study: ``launch`` and ``resume``.

``launch`` takes many options (the search, the pruner, the pool, and each kind of study's own); they are
declared once, in ``LAUNCH_OPTIONS``, and reach the library as one ``objectives.launch.LaunchOptions``.
The library checks them and builds the study (``plan_launch``: cheap checks first, then the kind's
builder); this module only parses, calls it, and prints.
"""

from __future__ import annotations

import inspect
import json
import threading
from pathlib import Path
from typing import Optional

import typer
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from ..errors import ConfigError
from ..search.defaults import ALGORITHM as DEFAULT_ALGORITHM
from ..search.defaults import PRUNER as DEFAULT_PRUNER
from ._common import MongoOpt, _check_url, _mongo, _setup_logging, _user_errors, app, err, out
from .progress import progress_line, progress_table

SEARCH_HELP = ("Search algorithm. Default optuna-tpe: Optuna's multivariate TPE that never proposes a point "
               "twice; over ten public benchmark tables its median regret is below Optuna's own default TPE's "
               "(geometric mean of the ratios 0.74-0.99, alone and with 4 or 16 parallel workers; README, "
               "'Search algorithms'). Also: nsga2 (several objectives), tpe (hyperopt's TPE, as the seed "
               "studies used), rand, anneal, grid (every combination; the study ends when it is exhausted) "
               "or gp (Gaussian-process Bayesian optimisation).")


PRUNER_HELP = ("Stop hopeless trials early: envelope, asha, hyperband, median or none. Default: "
               + DEFAULT_PRUNER["kind"] + " (from epoch " + str(DEFAULT_PRUNER["min_epochs"]) + ", stop a trial "
               "worse than each of the 3 best complete trials was at the same epoch): it keeps the slow starters "
               "that end best, which ASHA and successive halving from epoch 1 throw away (README, 'Pruning: "
               "time to target').")

SEED_HELP = ("Seed of the search and of each trial's training (weights, sample). Default: drawn fresh and "
             "recorded in the study (`mongotune status` shows it): rerun a study exactly with --seed N.")

OWN = "Your own code"

#: every option of ``launch``: (parameter, type, typer declaration); the parameters that are not
#: LaunchOptions fields (mongo, workers, wait, quiet) drive the run itself
LAUNCH_OPTIONS = [
    ("model", Optional[str], typer.Argument(None, help="Model to tune: baseline, convstrix, vggstrix, hyperresnet "
                                            "(or --command, or --model-fn).")),
    ("study", Optional[str], typer.Option(None, "--study", help="Study name (default: MODEL-DATASET).")),
    ("dataset", Optional[str], typer.Option(None, help="digits, fashion_mnist, mnist, cifar10, cifar100, folder, "
                                            "npz (default: the model's recipe, see `mongotune recipes`).")),
    ("max_evals", Optional[int], typer.Option(None, "--max-evals", help="Number of trials (default: the recipe's, "
                                              "else 20).")),
    ("algo", str, typer.Option(DEFAULT_ALGORITHM, help=SEARCH_HELP)),
    ("mongo", Optional[str], MongoOpt),
    ("workers", int, typer.Option(0, help="Start this many local worker processes for the study.")),
    ("space", Optional[Path], typer.Option(None, help="JSON search-space file (default: the model's own).")),
    ("augment", bool, typer.Option(False, "--augment", help="Also search online augmentation (flip, crop, "
                                   "rotation, translation, probability).")),
    ("size", Optional[int], typer.Option(None, help="Resize images to SIZE x SIZE (default: the recipe's for its "
                                         "dataset, else native, enlarged to what the model needs).")),
    ("channels", Optional[int], typer.Option(None, help="1 or 3 channels (default: the recipe's for its dataset, "
                                             "else native, RGB where the model needs it).")),
    ("interpolation", Optional[str], typer.Option(None, help="Resizing: area, linear, cubic, lanczos, nearest "
                                                  "(default: the recipe's, else area).")),
    ("source", Optional[str], typer.Option(None, help="Offline dataset path (directory or file).")),
    ("val_fraction", Optional[float], typer.Option(None, help="Fraction of train held out for validation "
                                                   "(default: the recipe's for its dataset, else 0.1).")),
    ("split_seed", Optional[int], typer.Option(None, "--split-seed", help="Seed of the validation split "
                                               "(default 0: every study of a dataset validates on the same "
                                               "images and shares one prepared cache).")),
    ("epochs", Optional[int], typer.Option(None, help="Maximum epochs per trial (default: the recipe's).")),
    ("patience", Optional[int], typer.Option(None, help="Early-stopping patience in epochs (default: the "
                                             "recipe's).")),
    ("loss", Optional[str], typer.Option(None, help="neg_val_accuracy, neg_val_accuracy_squared or val_loss "
                                         "(default: the recipe's).")),
    ("max_train_samples", Optional[int], typer.Option(None, help="Train on at most this many samples per trial.")),
    ("weights", Optional[str], typer.Option(None, help="vggstrix: 'imagenet' or a local VGG19 no-top .h5 path "
                                            "(default: the recipe's, imagenet).")),
    ("keep_models", int, typer.Option(3, "--keep-models", help="Keep the saved models of the best K trials; the "
                                      "others' are deleted as the study goes (params, history, curves stay).")),
    ("artifacts", Optional[str], typer.Option(None, help="Optional shared artifact root for the study; each "
                                              "worker uses it only if it is among its --allow-root roots.")),
    ("artifact_store", Optional[str], typer.Option(None, "--artifact-store", help="Where trials keep their "
                                                   "checkpoints: gridfs (the study's database, any host resumes "
                                                   "a trial), local (each worker's directory) or auto (default: "
                                                   "gridfs on MongoDB, local on the embedded server).")),
    ("checkpoint_every", Optional[float], typer.Option(None, "--checkpoint-every", help="Seconds: at most one "
                                                       "checkpoint per this many (Keras: at the end of an epoch, "
                                                       "default every epoch; a command: uploads of "
                                                       "$MONGOTUNE_CHECKPOINT_DIR, default 30).")),
    ("mixed_precision", str, typer.Option("auto", "--mixed-precision",
                                          help="auto (on with a GPU), on or off: mixed_float16 training.")),
    ("xla", str, typer.Option("auto", help="auto (on with a GPU), on or off: XLA-compiled training steps.")),
    ("pruner", Optional[str], typer.Option(None, help=PRUNER_HELP)),
    ("min_epochs", Optional[int], typer.Option(None, "--min-epochs", help="Pruning: epochs before the first "
                                               "decision (asha/hyperband: the first rung). Default 1.")),
    ("reduction_factor", Optional[int], typer.Option(None, "--reduction-factor", help="asha/hyperband: keep the "
                                                     "best 1/N at each rung (N >= 2, default 3).")),
    ("min_trials", Optional[int], typer.Option(None, "--min-trials", help="Pruning warm-up: trials that must "
                                               "reach a step before any is stopped there (median 4, asha 1).")),
    ("max_epochs", Optional[int], typer.Option(None, "--max-epochs", help="hyperband: the most steps (epochs) a "
                                               "trial runs (default: --epochs; a --command study must give it).")),
    ("grid_points", Optional[int], typer.Option(None, "--grid-points", help="grid: values per continuous "
                                                "dimension.")),
    ("acquisition", Optional[str], typer.Option(None, help="gp: ei (expected improvement, default) or ucb.")),
    ("kappa", Optional[float], typer.Option(None, help="gp with ucb: exploration weight.")),
    ("constant_liar", Optional[bool], typer.Option(None, "--constant-liar/--no-constant-liar", help="optuna-tpe, "
                                                   "tpe, gp: count queued and running trials as bad (worst for the "
                                                   "TPEs, the mean for gp) so idle workers get distinct "
                                                   "suggestions (default on).")),
    ("lease", float, typer.Option(60.0, help="Seconds without heartbeat before a trial is requeued.")),
    ("max_attempts", int, typer.Option(3, help="Expired leases before a trial is failed.")),
    ("startup_trials", Optional[int], typer.Option(None, "--startup-trials", help="optuna-tpe, tpe, gp: random "
                                                   "trials before the model takes over (default: optuna-tpe and gp "
                                                   "10, tpe 20).")),
    ("queue_spare", Optional[int], typer.Option(None, "--queue-spare", help="Trials queued beyond the idle "
                                                "workers (default: a third of the live workers, at least 1).")),
    ("seed", Optional[int], typer.Option(None, help=SEED_HELP)),
    ("wait", bool, typer.Option(False, "--wait", help="If another coordinator runs this study, wait for it.")),
    ("command", Optional[str], typer.Option(None, "--command", rich_help_panel=OWN,
                                            help="Tune a command instead of a model: 'python train.py --lr {lr}' "
                                            "({name} or :name: placeholders, filled from the --params).")),
    ("param", list[str], typer.Option([], "--param", rich_help_panel=OWN,
                                      help="A searched param of --command (repeat): lr:1e-4:1e-1:log, "
                                      "layers:1:6:int, drop:0:0.5:q=0.05, opt:adam,sgd, epochs:20.")),
    ("metric", list[str], typer.Option([], "--metric", help="An objective, NAME[:max|:min] (repeat for several: "
                                       "the first is the one trials report each step and pruning judges; "
                                       "search them with --algo optuna-tpe or nsga2). A --command study's "
                                       "metrics are what it prints (name=value, name: value or JSON lines); a "
                                       "Keras study's: val_accuracy or val_loss first (as --loss says), then "
                                       "params, inference_ms, train_seconds.")),
    ("constraint", list[str], typer.Option([], "--constraint", help="Keep a metric within a bound, 'NAME<=BOUND' "
                                           "or 'NAME>=BOUND' (repeat for several; --algo optuna-tpe or nsga2): "
                                           "trials that break one are marked infeasible and the search avoids "
                                           "them.")),
    ("goal", str, typer.Option("max", "--goal", rich_help_panel=OWN,
                               help="Is a higher (max) or lower (min) --metric better, where it does not say.")),
    ("metric_agg", str, typer.Option("last", "--metric-agg", rich_help_panel=OWN,
                                     help="A trial's value from its readings: last, max, min or mean.")),
    ("timeout", Optional[str], typer.Option(None, "--timeout", rich_help_panel=OWN,
                                            help="Fail a --command trial that runs longer (90s, 15m, 2h).")),
    ("workdir", Optional[str], typer.Option(None, "--workdir", rich_help_panel=OWN,
                                            help="Working directory of --command (default: each trial's own).")),
    ("model_fn", Optional[str], typer.Option(None, "--model-fn", rich_help_panel=OWN,
                                             help="Your Keras model: package.module:function taking (params, "
                                             "input_shape, num_classes); needs --space.")),
    ("objective", Optional[str], typer.Option(None, hidden=True)),
    ("options", Optional[str], typer.Option(None, hidden=True, help="JSON options for the objective.")),
    ("quiet", bool, typer.Option(False, "--quiet", "-q", help="Plain progress lines instead of a live table.")),
]


def with_options(table):
    """Give a ``def f(**given)`` command the parameters of ``table``, for Typer to parse."""

    def decorate(fn):
        fn.__signature__ = inspect.Signature([inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                                                default=decl, annotation=kind)
                                              for name, kind, decl in table])
        fn.__annotations__ = {name: kind for name, kind, _ in table}
        return fn

    return decorate


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

    def run(progress):
        try:
            return coord.run(name, progress=progress, stop=stop, wait=wait, on_wait=waiting)
        except KeyboardInterrupt:
            stop.set()
            raise

    try:
        if quiet or not out.is_terminal:
            last = {"done": -1}

            def progress(snap):
                if snap.finished != last["done"]:
                    last["done"] = snap.finished
                    out.print(progress_line(snap), highlight=False, markup=False)

            return run(progress)
        with Live(console=out, refresh_per_second=4) as live:
            return run(lambda s: live.update(progress_table(s)))
    finally:
        if pool:
            pool.stop()
        coord.close()


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
    out.print("best params: " + json.dumps(snap.best_params, default=str), highlight=False, markup=False)


def _create(url: str, study) -> None:
    from ..pool.coordinator import Coordinator

    coord = Coordinator(url)
    try:
        coord.create(study)
    finally:
        coord.close()


def _created_line(url: str, built) -> Text:
    from ..store import redact

    st = built.study
    pruner = f", {st.pruner['kind']} pruning" if st.pruner else ""
    line = Text.assemble("study ", (st.name, "bold"), f" created on {redact(url)}: {built.what}, "
                         f"{st.max_evals} trials, {st.algo}{pruner}, seed {st.seed}")
    if st.algo == "grid":
        from ..search.grid import grid_size
        from ..search.spaces import build

        size = grid_size(build(st.space), st.search.get("grid_points"))
        if size < st.max_evals:
            line.append(f"\nthe grid has {size} points; the study ends when it is exhausted")
    return line


@app.command()
@with_options(LAUNCH_OPTIONS)
def launch(*, mongo, workers, wait, quiet, **given):
    """Create a study and run it: hyperopt's fmin queues trials, workers train them."""
    import os

    from ..objectives.launch import LaunchOptions, plan_launch
    from .data import _progress

    _setup_logging()
    given["space"] = str(given["space"]) if given["space"] is not None else None
    with _user_errors():
        _check_url(mongo)  # a bad URL fails before anything is checked further, let alone downloaded
        with _progress() as progress:  # a download's progress, if one is needed
            plan = plan_launch(LaunchOptions(**given, cwd=os.getcwd()), progress)
        for notice in plan.built.notices:
            err.print(f"note: {notice}", highlight=False, markup=False, soft_wrap=True)
        with _mongo(mongo) as url:
            _create(url, plan.study)
            out.print(_created_line(url, plan.built), highlight=False)
            snap = drive(url, plan.study.name, workers, quiet, wait=wait, allowed_roots=plan.built.allowed_roots,
                         allow_user_code=plan.user_code)
        report_done(snap, plan.study.name)


def _read_study(url: str, name: str):
    """The study document (pymongo only: an unknown name is one line before hyperopt loads)."""
    from ..store import open_client
    from ..store.studies import StudyStore

    client, db, _ = open_client(url)
    try:
        return StudyStore(db).get(name)
    finally:
        client.close()


def _raise_budget(url: str, name: str, max_evals: int, wait: bool) -> None:
    """A live coordinator would not see the new budget: refuse now (StudyBusy) unless --wait."""
    from ..pool.coordinator import Coordinator

    coord = Coordinator(url)
    try:
        token = None if wait else coord.acquire(name)
        coord.studies.update(name, max_evals=max_evals)
        if token:
            coord.studies.release_coordinator(name, token)
    finally:
        coord.close()


@app.command()
def resume(name: str = typer.Argument(..., help="Study name."), mongo: Optional[str] = MongoOpt,
           workers: int = typer.Option(0, help="Start this many local worker processes."),
           max_evals: Optional[int] = typer.Option(None, "--max-evals", help="Raise the study's budget."),
           wait: bool = typer.Option(False, "--wait", help="If another coordinator runs this study, wait for it."),
           quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Continue an interrupted study up to its max evals (nothing is run twice); it keeps its seed."""
    from ..objectives import runs_user_code

    _setup_logging()
    with _user_errors():
        if max_evals is not None and max_evals < 1:
            raise ConfigError(f"--max-evals must be a positive integer, got {max_evals}")
        _check_url(mongo)
        with _mongo(mongo) as url:
            st = _read_study(url, name)
            if max_evals is not None:
                _raise_budget(url, name, max_evals, wait)
            snap = drive(url, name, workers, quiet, wait=wait, allow_user_code=runs_user_code(st.objective))
        report_done(snap, st.name)
