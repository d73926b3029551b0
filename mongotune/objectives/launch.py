"""``mongotune launch`` as library code: from the options given to a validated study, in the order that
answers bad input fastest.

``plan_launch(opts)`` picks the kind of study the options ask for, then checks, before anything heavy
loads (TensorFlow, Keras, numpy, pymongo, hyperopt, optuna) and before any download or server start:
the combination of options, the space file, the study's generic settings (name, budget, lease, attempts,
queue, seed, pruner, the search algorithm's name) and the kind's own options (model and dataset names,
training switches, a grid over a continuous space).  Only then does it check the search options
(hyperopt) and let the kind build its study (Keras, the data, the weights).  The CLI prints and exits;
this module never does.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..search.defaults import ALGORITHM, ALGORITHM_NAMES, PRUNER
from ..store._defaults import DEFAULT_LEASE_S, DEFAULT_MAX_ATTEMPTS
from .kinds import ObjectiveKind, kinds

#: a study's seed: 0 <= seed < 2**31 (drawn fresh unless --seed is given)
SEED_BITS = 31
#: JSON space kinds with no finite set of values of their own (a grid needs --grid-points for them)
_UNBOUNDED = ("uniform", "loguniform", "normal", "qnormal", "lognormal")
#: the options only command studies take
COMMAND_OPTIONS = ("param", "timeout", "workdir")


@dataclass
class LaunchOptions:
    """What ``mongotune launch`` was given; None: not given (the kind's, or the recipe's, default)."""

    model: str | None = None
    study: str | None = None
    dataset: str | None = None
    max_evals: int | None = None
    algo: str = ALGORITHM
    space: str | None = None  # a JSON space file
    augment: bool = False
    size: int | None = None
    channels: int | None = None
    interpolation: str | None = None
    source: str | None = None
    val_fraction: float | None = None
    split_seed: int | None = None  # the validation split's seed (None: 0, the same split for every study)
    epochs: int | None = None
    patience: int | None = None
    loss: str | None = None
    max_train_samples: int | None = None
    weights: str | None = None
    keep_models: int = 3
    artifacts: str | None = None
    artifact_store: str | None = None  # checkpoints: auto, local or gridfs (store.artifacts)
    checkpoint_every: float | None = None  # seconds between checkpoints (None: the kind's default)
    mixed_precision: str = "auto"
    xla: str = "auto"
    pruner: str | None = None  # None: search.defaults.PRUNER; "none": no pruning
    min_epochs: int | None = None
    reduction_factor: int | None = None
    min_trials: int | None = None
    max_epochs: int | None = None  # hyperband: the most steps a trial runs (a Keras study's: its epochs)
    grid_points: int | None = None
    acquisition: str | None = None
    kappa: float | None = None
    constant_liar: bool | None = None
    startup_trials: int | None = None
    lease: float = DEFAULT_LEASE_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    queue_spare: int | None = None
    seed: int | None = None  # None: drawn fresh (recorded in the study)
    command: str | None = None
    param: list[str] = field(default_factory=list)
    metric: list[str] = field(default_factory=list)  # --metric NAME[:max|:min], repeatable: the objectives
    constraint: list[str] = field(default_factory=list)  # --constraint 'NAME<=BOUND', repeatable
    goal: str = "max"
    metric_agg: str = "last"
    timeout: str | None = None
    workdir: str | None = None
    model_fn: str | None = None
    objective: str | None = None  # the pool's own objectives (synthetic, sleep): tests and benchmarks
    options: str | None = None  # their options, as JSON
    cwd: str | None = None  # where relative paths of the command line are relative to (None: the current one)


@dataclass
class Built:
    """A kind's study, ready to be written, and what the CLI shows about it."""

    study: Any  # store.studies.Study
    what: str  # "baseline on digits", "command python train.py ..."
    notices: list[str] = field(default_factory=list)  # one line each
    allowed_roots: list[str] = field(default_factory=list)  # directories local workers may read (--source ...)
    inputs: Any = None  # the kind's own: what its ``prepare`` fetches or checks


@dataclass
class LaunchPlan:
    kind: ObjectiveKind
    built: Built

    @property
    def study(self):
        return self.built.study

    @property
    def user_code(self) -> bool:
        return self.kind.runs_user_code(self.study.objective)


def no_command_options(opts: LaunchOptions) -> None:
    """ConfigError naming the options of command studies that were given to another kind."""
    given = ["--" + k.replace("_", "-") for k in COMMAND_OPTIONS if getattr(opts, k)]
    if given:
        raise ConfigError(f"{', '.join(given)} only apply to --command studies")


def new_seed() -> int:
    """A fresh study seed (31 bits, from the OS's randomness)."""
    return secrets.randbits(SEED_BITS)


def choose_kind(opts: LaunchOptions) -> ObjectiveKind:
    """The kind of study the options ask for; ConfigError for a combination that asks for none or several."""
    if opts.command is not None and opts.model_fn is not None:
        raise ConfigError("give --command or --model-fn, not both")
    if opts.model is not None and (opts.command is not None or opts.model_fn is not None):
        raise ConfigError(f"give a MODEL or {'--command' if opts.command is not None else '--model-fn'}, not both")
    if opts.model is None and opts.command is None and opts.model_fn is None:
        raise ConfigError("give a MODEL to tune (see `mongotune recipes`), --command or --model-fn")
    kind = next((k for k in kinds() if k.wanted(opts)), None)
    if kind is None:
        raise ConfigError(f"unknown objective {opts.objective!r}")
    kind.check_options(opts)
    return kind


def check_seed(seed: int | None, flag: str = "--seed") -> None:
    if seed is not None and not 0 <= seed < 2**32:
        raise ConfigError(f"{flag} must be an integer from 0 to {2**32 - 1}, got {seed}")


def pruner_settings(opts: LaunchOptions, max_epochs: int | None) -> dict | None:
    """The study's ``pruner`` setting; ``--pruner`` not given: the default pruner (``search.defaults.PRUNER``)."""
    from ..search.pruners import validate_pruner

    spec: dict = dict(PRUNER) if opts.pruner is None else {"kind": opts.pruner}
    for key in ("min_epochs", "reduction_factor", "min_trials", "max_epochs"):
        if getattr(opts, key) is not None:
            spec[key] = getattr(opts, key)
    return validate_pruner(spec, max_epochs)


def core_settings(opts: LaunchOptions, kind: ObjectiveKind) -> dict:
    """The generic settings of the study (``Study`` fields) and its name and budget, checked without any
    heavy import; the seed drawn fresh unless given."""
    from ..store.studies import Study

    if opts.algo not in ALGORITHM_NAMES:
        raise ConfigError(f"unknown algorithm {opts.algo!r}; choose from: {', '.join(ALGORITHM_NAMES)}")
    check_seed(opts.seed)
    check_seed(opts.split_seed, "--split-seed")
    core = dict(name=opts.study or kind.default_name(opts),
                max_evals=opts.max_evals if opts.max_evals is not None else kind.default_max_evals(opts),
                pruner=pruner_settings(opts, kind.launch_max_epochs(opts)), lease_s=opts.lease,
                max_attempts=opts.max_attempts, queue_spare=opts.queue_spare,
                seed=opts.seed if opts.seed is not None else new_seed(), artifacts_root=opts.artifacts,
                artifact_store=opts.artifact_store)
    Study(objective={"kind": kind.name}, search={"algo": opts.algo}, **core).validate()
    return core


def objective_settings(opts: LaunchOptions, kind: ObjectiveKind) -> dict:
    """The study's ``metrics`` (several objectives; None: one) and ``constraints`` from ``--metric`` and
    ``--constraint``, checked without any heavy import: each name one the kind reports, no name twice, a
    direction of max or min, the first the metric the kind's trials monitor, an algorithm that searches them."""
    from .metrics import check_algorithm, parse_constraint, parse_metrics

    known, what = kind.known_metrics(opts), f"{kind.name} study"
    metrics = parse_metrics(list(opts.metric or []), opts.goal, known, what)
    monitored = kind.launch_metric(opts)
    if metrics and monitored is not None and metrics[0] != monitored:
        raise ConfigError(f"--metric {metrics[0]['name']}:{metrics[0]['goal']}: the first --metric of a {what} is "
                          f"the metric its trials monitor, {monitored['name']}:{monitored['goal']} here")
    reported = dict(known) if known is not None else None
    constraints = [parse_constraint(c, reported, what) for c in opts.constraint or []]
    check_algorithm(opts.algo, max(len(metrics), 1), len(constraints))
    return {"metrics": metrics if len(metrics) > 1 else None, "constraints": constraints}


def search_settings(opts: LaunchOptions) -> dict:
    """The study's ``search`` setting from the options given (the others stay the algorithm's defaults);
    imports hyperopt."""
    if opts.startup_trials is not None and opts.startup_trials < 1:
        raise ConfigError(f"--startup-trials must be >= 1, got {opts.startup_trials}")
    from ..search.algorithms import ALGORITHMS, check_options

    flags = {"startup_trials": "--startup-trials", "grid_points": "--grid-points", "acquisition": "--acquisition",
             "kappa": "--kappa", "constant_liar": "--no-constant-liar"}
    given = {k: getattr(opts, k) for k in flags if getattr(opts, k) is not None}
    for key in given:
        if key not in ALGORITHMS[opts.algo][1]:
            users = [a for a, (_, spec) in ALGORITHMS.items() if key in spec]
            raise ConfigError(f"{flags[key]} applies to --algo {' and '.join(users)}, not --algo {opts.algo}")
    if len(opts.metric or []) > 1:  # several objectives: the search models each (the options were checked)
        given["objectives"] = len(opts.metric)
    return {"algo": opts.algo, **check_options(opts.algo, given)}


def continuous_dimension(space: Any, path: str = "") -> tuple[str, str] | None:
    """``(label, kind)`` of the first dimension of a JSON space that has no finite set of values (a grid
    needs ``--grid-points`` for it), or None; needs no hyperopt."""
    if isinstance(space, dict):
        if "hp" in space:
            if space["hp"] in _UNBOUNDED:
                return str(space.get("label", path)), str(space["hp"])
            if space["hp"] == "choice":
                return continuous_dimension(space.get("options") or [], path)
            return None
        items = [(f"{path}.{k}" if path else str(k), v) for k, v in space.items()]
    elif isinstance(space, list):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(space)]
    else:
        return None
    for sub_path, value in items:
        found = continuous_dimension(value, sub_path)
        if found:
            return found
    return None


def check_grid(opts: LaunchOptions, space: dict | None) -> None:
    """A grid without --grid-points over a JSON space with a continuous dimension: the error grid search
    would give, before hyperopt loads."""
    if opts.algo != "grid" or opts.grid_points or space is None:
        return
    found = continuous_dimension(space)
    if found:
        raise ConfigError(f"grid search: {found[0]!r} is a continuous dimension ({found[1]}); give grid_points "
                          "(--grid-points N) to put N values on it")


def check_search(study) -> None:
    """The study's search can work its space (grid: a finite one), before anything is written."""
    from ..pool.coordinator import resolve_space, suggest_for

    suggest_for(study, resolve_space(study))


def plan_launch(opts: LaunchOptions, progress=None) -> LaunchPlan:
    """Check the options and build the study they ask for (not yet written)."""
    from ..search.spaces import load_space_file

    kind = choose_kind(opts)
    space = load_space_file(opts.space) if opts.space else None
    kind.check(opts, space)  # the model, the function, the command: what the user named first
    objectives = objective_settings(opts, kind)  # the metrics and constraints it was asked for
    core = {**core_settings(opts, kind), **objectives}
    check_grid(opts, space)
    core["search"] = search_settings(opts)
    built = kind.build(opts, core, space)
    check_search(built.study)  # the search can work the resolved space (grid: a finite one), before downloads
    kind.prepare(built, progress)
    return LaunchPlan(kind, built)
