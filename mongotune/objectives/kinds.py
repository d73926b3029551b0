"""Objective kinds: one interface for every kind of study, and the fixed table of them.

A kind says everything the rest of mongotune needs to know about a kind of
study, so that nothing outside this package asks which kind a study is:

* at launch: whether the options ask for it (``wanted``), its default study
  name and budget, cheap checks of its options (``check``: no TensorFlow, no
  numpy, no pymongo, no download), and how it builds its study (``build``:
  the validated ``Study`` with its resolved JSON space and metric, what to
  print, which directories the local workers must be allowed to read);
* for a study: its JSON search space (``space``: the stored one, else the
  kind's own), the local paths a worker would read (``local_paths``), the
  metric it reports (``metric``), the most steps a trial runs
  (``max_epochs``, for Hyperband), a one-line description (``describe``),
  whether it runs the user's code (``runs_user_code``: the worker needs
  ``--allow-user-code``), whether ``final`` retrains it (``check_final``), and
  how a trial runs (``run``).

The table is fixed: a kind named in the database only selects one of these
classes, never a module or a function.  Test kinds (``synthetic``) run only
where mongotune's own test suite switched them on (``TEST_SWITCH``);
anywhere else they count as user code (a worker without
``--allow-user-code`` leaves their trials alone) and a worker that takes one
fails it with a ``config`` failure saying why.

Every kind module is light to import; what a kind needs that is heavy
(Keras, hyperopt, the dataset) is imported inside the method that uses it.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ConfigError, TrialFailure, TrialPruned

if TYPE_CHECKING:  # pragma: no cover
    from .launch import Built, LaunchOptions

TEST_SWITCH = "MONGOTUNE_TEST_OBJECTIVES"

#: the space of a study of the pool's own objectives written without one
DEFAULT_SPACE = {"x": {"hp": "uniform", "low": -1.0, "high": 1.0}}


def test_kinds_enabled() -> bool:
    """Has the test suite switched the test kinds on in this process's environment?"""
    return os.environ.get(TEST_SWITCH) == "1"


class ObjectiveKind:
    """One kind of study.  Subclasses set the class attributes and override what differs."""

    name: str = ""  # the objective's stored ``kind``
    runner: str = ""  # "mongotune.objectives.MODULE:FUNCTION" that runs one trial (mongotune's own code only)
    default_metric: dict = {"name": "loss", "goal": "min"}  # what its trials report unless the study says
    user_code: bool = False  # its trials run the user's code: a worker needs --allow-user-code
    test_only: bool = False  # only where the test suite switched test kinds on (TEST_SWITCH)
    final: bool = False  # `mongotune final` retrains its best trial
    seeded: bool = True  # the study's seed drives its search (status shows it; launch --seed N reruns it)

    # ------------------------------------------------------------ which objectives it is
    def claims(self, objective: dict) -> bool:
        """Is a study with this ``objective`` setting of this kind?"""
        return objective.get("kind") == self.name

    # ------------------------------------------------------------ launch
    def wanted(self, opts: "LaunchOptions") -> bool:
        """Do the launch options ask for this kind?"""
        return False

    def check_options(self, opts: "LaunchOptions") -> None:
        """Options that only apply to other kinds: ConfigError (before anything is checked further)."""

    def default_name(self, opts: "LaunchOptions") -> str:
        raise ConfigError("give the study a name: --study NAME")

    def default_max_evals(self, opts: "LaunchOptions") -> int:
        return 20

    def launch_max_epochs(self, opts: "LaunchOptions") -> int | None:
        """The most steps a trial of this launch runs (Hyperband needs it), known without heavy imports."""
        return None

    def known_metrics(self, opts: "LaunchOptions") -> dict[str, str] | None:
        """The metrics this kind's trials report, each with the goal it has unless ``--metric`` says (what
        ``--metric`` and ``--constraint`` may name); None: any name (a command prints what it prints)."""
        return {str(self.default_metric["name"]): str(self.default_metric["goal"])}

    def launch_metric(self, opts: "LaunchOptions") -> dict | None:
        """The metric this launch's trials monitor (their curve, the pruner's), known without heavy imports:
        the first ``--metric`` must be it; None: the first ``--metric`` names it (a command's)."""
        return dict(self.default_metric)

    def check(self, opts: "LaunchOptions", space: dict | None) -> None:
        """Everything about the options that can be checked without TensorFlow, numpy, pymongo, hyperopt or a
        download (``space``: the ``--space`` file's JSON, already checked)."""

    def build(self, opts: "LaunchOptions", core: dict, space: dict | None) -> "Built":
        """The study (validated, with its resolved JSON space and its metric) and what the CLI shows; may
        import heavy modules, downloads nothing.  ``core``: the generic study settings (``launch.core_settings``)
        with its ``search``."""
        raise ConfigError(f"{self.name} studies are not launched with `mongotune launch`")

    def prepare(self, built: "Built", progress=None) -> None:
        """After the search accepted the space: fetch what the trials need (data, weights) and check the
        user's code can be imported, so a launch fails here with one line rather than in every trial."""

    # ------------------------------------------------------------ a study of this kind
    def space(self, study) -> dict:
        """The study's JSON search space: the stored one, else this kind's own."""
        return study.space if study.space is not None else self.own_space(study)

    def own_space(self, study) -> dict:
        return dict(DEFAULT_SPACE)

    def local_paths(self, study) -> list[str]:
        """Files on the worker's host the study names (read only inside the worker's allowed roots)."""
        return []

    def metric(self, study) -> dict:
        """The study's metric: its name and which way is better."""
        return dict(getattr(study, "metric", None) or self.default_metric)

    def max_epochs(self, study) -> int | None:
        """The most steps (epochs) a trial of the study runs, where the kind knows it."""
        return None

    def describe(self, study) -> str:
        """What the study tunes, in a few words (may hold strings from the database: print them as text)."""
        return self.name

    def runs_user_code(self, objective: dict) -> bool:
        if self.test_only and not test_kinds_enabled():
            return True
        return self.user_code

    def check_final(self, study, allow_user_code: bool) -> None:
        """ConfigError unless ``mongotune final`` can retrain this study's best trial here."""
        if not self.final:
            raise ConfigError(f"study {study.name!r} does not train Keras models (objective {self.name!r}); "
                              "`final` retrains Keras models only")

    def run(self, study, params: dict, ctx) -> Any:
        """One trial: the result (``{"status": "ok", "loss": ..., ...}``) or a bare loss; raises
        ``TrialFailure`` (recorded, the worker goes on) or ``TrialPruned``.  The result holds the study's
        ``losses`` and ``constraints`` where it has several objectives or constraints (``metrics.score``)."""
        from .metrics import score

        if self.test_only and not test_kinds_enabled():
            raise TrialFailure("config", f"the {self.name!r} objective is for mongotune's own tests and runs only "
                                         f"where they set {TEST_SWITCH}=1; this worker refuses it")
        try:
            return score(study, self.runner_function()(study, params, ctx))
        except TrialPruned as pruned:
            pruned.result = score(study, pruned.result, pruned=True)
            raise

    def runner_function(self) -> Callable:
        module, _, fn = self.runner.partition(":")
        return getattr(importlib.import_module(module), fn)

    # ------------------------------------------------------------ studies written before the generic core
    def legacy_objective(self, doc: dict) -> dict:
        """The ``objective`` of a study document written before the generic core (settings at the top)."""
        return {"kind": doc.get("objective") or self.name, "options": doc.get("options") or {}}

    def legacy_metric(self, doc: dict) -> dict:
        options = doc.get("options") or {}
        if isinstance(options.get("metric"), str) and options["metric"]:
            return {"name": options["metric"], "goal": "min" if options.get("goal") == "min" else "max"}
        return dict(self.default_metric)


_KINDS: list[ObjectiveKind] | None = None


def kinds() -> list[ObjectiveKind]:
    """Every kind, in the order they claim objectives and launches (the more specific first)."""
    global _KINDS
    if _KINDS is None:
        from .command_kind import CommandKind
        from .keras_launch import KerasKind, ModelFnKind
        from .stock_fmin import StockFminKind
        from .synthetic import SleepKind, SyntheticKind

        _KINDS = [ModelFnKind(), KerasKind(), CommandKind(), SyntheticKind(), SleepKind(), StockFminKind()]
    return _KINDS


def kind_names() -> list[str]:
    return sorted({k.name for k in kinds()})


def objective_kind(study_or_objective) -> ObjectiveKind:
    """The kind of a study (or of its ``objective`` setting); ConfigError for a kind this table lacks."""
    objective = getattr(study_or_objective, "objective", study_or_objective)
    if isinstance(objective, dict):
        for kind in kinds():
            if kind.claims(objective):
                return kind
    name = objective.get("kind") if isinstance(objective, dict) else objective
    raise ConfigError(f"unknown objective kind {name!r}; choose from: {', '.join(kind_names())}")


def kind_named(name: str) -> ObjectiveKind:
    """The kind stored as ``name`` (the plainest of them where several share it: Keras, not --model-fn)."""
    for kind in reversed(kinds()):
        if kind.name == name:
            return kind
    raise ConfigError(f"unknown objective kind {name!r}; choose from: {', '.join(kind_names())}")


def runs_user_code(objective: dict) -> bool:
    """Does a trial of this objective run code the user supplied (a command, a model function)?  An
    objective this table does not know counts as user code."""
    try:
        return objective_kind(objective).runs_user_code(objective)
    except ConfigError:
        return True


def run_trial(study, params: dict, ctx) -> Any:
    """Run one trial of ``study`` (what a worker does); a kind this table lacks fails it as ``config``."""
    return kind_for_trial(study).run(study, params, ctx)


def kind_for_trial(study) -> ObjectiveKind:
    """The study's kind, for a worker: TrialFailure ``config`` for a kind this table lacks."""
    try:
        return objective_kind(study)
    except ConfigError as exc:
        raise TrialFailure("config", str(exc)) from None


def describe(study) -> str:
    """``objective_kind(study).describe(study)``, or the stored kind itself for a kind this table lacks."""
    try:
        return objective_kind(study).describe(study)
    except ConfigError:
        objective = getattr(study, "objective", None)
        return str(objective.get("kind") if isinstance(objective, dict) else objective)


def upgrade_legacy(doc: dict) -> dict:
    """``objective`` and ``metric`` of a study document written before the generic core (objective name and
    Keras fields at the top of the document)."""
    try:
        kind = kind_named(doc.get("objective") or "keras")
    except ConfigError:
        kind = ObjectiveKind()  # a kind this table lacks: its stored options, judged by its loss
    return {"objective": kind.legacy_objective(doc), "metric": kind.legacy_metric(doc)}
