"""The Keras kinds: a built-in model of the zoo (``launch MODEL``) and the user's own (``--model-fn``).

Both store ``{"kind": "keras", "model": ..., "dataset": ..., "training": ..., ...}``; a ``--model-fn`` study
also names its function (``model_fn``), which makes it user code.  At launch each checks what it can
without TensorFlow first (the model's name, the dataset's, the training switches), then resolves the
search space for the dataset's image shape and stores it as JSON in the study, so that workers and a
later ``resume`` need nothing but the study document; downloads come last (``prepare``).
"""

from __future__ import annotations

import os

from ..errors import ConfigError
from .keras_settings import KerasSettings, Training, input_shape_of
from .kinds import ObjectiveKind
from .launch import Built, LaunchOptions, no_command_options

DEFAULT_DATASET = "digits"
DEFAULT_EPOCHS = 50
IMAGE_OPTIONS = ("size", "channels", "interpolation", "val_fraction", "source")


def keras_objective(model: str, dataset, training: Training, *, augment: bool = False,
                    model_fn: str | None = None) -> dict:
    """A Keras study's ``objective`` setting (``dataset``: a ``DataSpec``)."""
    training.validate()
    return KerasSettings(model=model, dataset=dataset.to_dict(), training=training, augment=augment,
                         model_fn=model_fn).to_objective()


def resolve_keras_space(objective: dict, space: dict | None = None) -> dict:
    """The study's JSON space: the one given, or the model's own for the dataset's image shape."""
    from ..search.spaces import build, to_json

    if space is not None:
        build(space)
        return space
    from .._quiet import import_keras_quietly

    import_keras_quietly()
    from ..models import get_model

    ks = KerasSettings.from_objective(objective)
    return to_json(get_model(ks.model).space(input_shape_of(ks.dataset), augment=ks.augment))


def keras_study(name: str, max_evals: int, objective: dict, *, space: dict | None = None, **core):
    """A validated Keras ``Study`` (not yet written): the metric follows the training loss."""
    from ..store.studies import Study

    ks = KerasSettings.from_objective(objective)
    study = Study(name=name, max_evals=max_evals, objective=objective, metric=ks.training.metric, **core)
    study.validate()
    study.space = resolve_keras_space(objective, space)
    return study


def _roots(*paths: str | None) -> list[str]:
    """The directories of local files the study names: the local workers may read them."""
    return [os.path.dirname(os.path.abspath(os.path.expanduser(p))) for p in paths if p]


def _check_data(opts: LaunchOptions, name: str) -> None:
    """The dataset options as given, checked without numpy (the recipe's adaptations come later)."""
    from ..data import DataSpec

    given = {k: getattr(opts, k) for k in IMAGE_OPTIONS if getattr(opts, k) is not None}
    DataSpec.from_dict({"name": name, "seed": opts.split_seed or 0, **given})


#: what a Keras trial reports that a study may take as an objective or a constraint, with its direction
KERAS_METRICS = {"val_accuracy": "max", "val_loss": "min", "params": "min", "inference_ms": "min",
                 "train_seconds": "min"}


class KerasKind(ObjectiveKind):
    """A built-in model of the zoo, with its recipe's defaults (``mongotune recipes``)."""

    name = "keras"
    runner = "mongotune.objectives.keras_trial:train_trial"
    default_metric = {"name": "val_accuracy", "goal": "max"}
    final = True

    def claims(self, objective: dict) -> bool:
        return objective.get("kind") == "keras" and not objective.get("model_fn")

    # ------------------------------------------------------------ launch
    def wanted(self, opts: LaunchOptions) -> bool:
        return opts.model is not None and opts.objective in (None, "keras")

    def check_options(self, opts: LaunchOptions) -> None:
        no_command_options(opts)

    @staticmethod
    def _recipe(opts: LaunchOptions):
        from ..models.recipes import get_recipe

        return get_recipe(opts.model)

    def _dataset(self, opts: LaunchOptions) -> str:
        recipe = self._recipe(opts)
        return opts.dataset or (recipe.dataset if recipe else DEFAULT_DATASET)

    def default_name(self, opts: LaunchOptions) -> str:
        return f"{opts.model}-{self._dataset(opts)}"

    def default_max_evals(self, opts: LaunchOptions) -> int:
        from ..models.recipes import DEFAULT_MAX_EVALS

        recipe = self._recipe(opts)
        return recipe.max_evals if recipe and recipe.max_evals else DEFAULT_MAX_EVALS

    def launch_max_epochs(self, opts: LaunchOptions) -> int | None:
        recipe = self._recipe(opts)
        if opts.epochs is not None:
            return opts.epochs
        return recipe.epochs if recipe else DEFAULT_EPOCHS

    def known_metrics(self, opts: LaunchOptions) -> dict[str, str] | None:
        return dict(KERAS_METRICS)

    def launch_metric(self, opts: LaunchOptions) -> dict | None:
        recipe = self._recipe(opts) if opts.model is not None else None
        loss = opts.loss or (recipe.loss if recipe else "neg_val_accuracy")
        return {"name": "val_loss", "goal": "min"} if loss == "val_loss" else {"name": "val_accuracy", "goal": "max"}

    def training(self, opts: LaunchOptions, seed: int, **recipe) -> Training:
        """Each trial's training from the options (``recipe``: the recipe's epochs, patience, loss, weights)."""
        def pick(key: str, default):
            if key in recipe:
                return recipe[key]
            return default if getattr(opts, key) is None else getattr(opts, key)

        return Training(epochs=pick("epochs", DEFAULT_EPOCHS), patience=pick("patience", 5),
                        loss=pick("loss", "neg_val_accuracy"),
                        max_train_samples=opts.max_train_samples, weights=recipe.get("weights"), seed=seed,
                        mixed_precision=opts.mixed_precision, xla=opts.xla, keep_models=opts.keep_models,
                        checkpoint_every=0.0 if opts.checkpoint_every is None else opts.checkpoint_every)

    def check(self, opts: LaunchOptions, space: dict | None) -> None:
        from ..models._registry import check_model_name

        check_model_name(opts.model)
        self.training(opts, 0).validate()
        _check_data(opts, self._dataset(opts))
        if opts.algo == "grid" and not opts.grid_points and space is None:
            # every built-in space has continuous dimensions (learning rate, augmentation probability,
            # coarse-label weight): tests/test_cli_errors.py keeps this true
            raise ConfigError(f"grid search over {opts.model}'s own space needs --grid-points N: it has "
                              "continuous dimensions (e.g. the learning rate)")

    def build(self, opts: LaunchOptions, core: dict, space: dict | None) -> Built:
        from .._quiet import import_keras_quietly
        from ..data import DataSpec
        from ..models.recipes import resolve_launch

        given = {"dataset": opts.dataset, "seed": opts.split_seed, "max_evals": core["max_evals"],
                 **{k: getattr(opts, k) for k in (*IMAGE_OPTIONS, "epochs", "patience", "loss", "weights")}}
        import_keras_quietly()  # the model registry needs Keras; its start-up chatter stays off the terminal
        settings = resolve_launch(opts.model, given)
        training = self.training(opts, core["seed"], epochs=settings.epochs, patience=settings.patience,
                                 loss=settings.loss, weights=settings.weights)
        objective = keras_objective(opts.model, DataSpec.from_dict(settings.dataset), training,
                                    augment=opts.augment)
        study = keras_study(core["name"], objective=objective, space=space,
                            **{k: v for k, v in core.items() if k != "name"})
        weights = settings.weights if settings.weights not in (None, "imagenet") else None
        return Built(study, f"{opts.model} on {settings.dataset['name']}", list(settings.notices),
                     _roots(opts.source, weights), inputs=settings)

    def prepare(self, built: Built, progress=None) -> None:
        from ..models.recipes import check_launch_inputs

        check_launch_inputs(built.inputs, progress=progress)  # the data and the weights are here, or one line

    # ------------------------------------------------------------ a study of this kind
    def own_space(self, study) -> dict:
        return resolve_keras_space(study.objective)

    def local_paths(self, study) -> list[str]:
        return KerasSettings.of(study).local_paths()

    def max_epochs(self, study) -> int | None:
        return KerasSettings.of(study).training.epochs

    def describe(self, study) -> str:
        obj = study.objective
        dataset = obj.get("dataset") if isinstance(obj.get("dataset"), dict) else {}
        return f"{obj.get('model_fn') or obj.get('model')} on {dataset.get('name')}"

    def legacy_objective(self, doc: dict) -> dict:
        return {"kind": "keras", "model": doc.get("model"), "dataset": doc.get("dataset"),
                "training": doc.get("training") or {}, "augment": bool(doc.get("augment"))}

    def legacy_metric(self, doc: dict) -> dict:
        loss = (doc.get("training") or {}).get("loss", "neg_val_accuracy")
        return {"name": "val_loss", "goal": "min"} if loss == "val_loss" else {"name": "val_accuracy", "goal": "max"}


class ModelFnKind(KerasKind):
    """The user's Keras model, ``--model-fn package.module:build_model``, trained like a built-in one."""

    user_code = True

    def claims(self, objective: dict) -> bool:
        return objective.get("kind") == "keras" and bool(objective.get("model_fn"))

    # ------------------------------------------------------------ launch
    def wanted(self, opts: LaunchOptions) -> bool:
        return opts.model_fn is not None

    def check_options(self, opts: LaunchOptions) -> None:
        no_command_options(opts)
        if opts.augment:
            raise ConfigError("--augment applies to the built-in models")

    def _dataset(self, opts: LaunchOptions) -> str:
        return opts.dataset or DEFAULT_DATASET

    def default_name(self, opts: LaunchOptions) -> str:
        return f"{opts.model_fn.rpartition(':')[2]}-{self._dataset(opts)}"

    def default_max_evals(self, opts: LaunchOptions) -> int:
        return 20

    def launch_max_epochs(self, opts: LaunchOptions) -> int | None:
        return DEFAULT_EPOCHS if opts.epochs is None else opts.epochs

    def check(self, opts: LaunchOptions, space: dict | None) -> None:
        from .model_fn import check_ref

        check_ref(opts.model_fn)
        if not space:
            raise ConfigError(f"--model-fn {opts.model_fn} needs a search space: give --space FILE")
        self.training(opts, 0).validate()
        _check_data(opts, self._dataset(opts))

    def build(self, opts: LaunchOptions, core: dict, space: dict | None) -> Built:
        from ..data import DataSpec
        from ..store.studies import Study

        given = {k: getattr(opts, k) for k in IMAGE_OPTIONS if getattr(opts, k) is not None}
        dataset = DataSpec.from_dict({"name": self._dataset(opts), "seed": opts.split_seed or 0, **given})
        training = self.training(opts, core["seed"])
        objective = keras_objective(opts.model_fn, dataset, training, model_fn=opts.model_fn)
        study = Study(objective=objective, metric=training.metric, space=space, **core).validate()
        return Built(study, f"{opts.model_fn} on {dataset.name}", [], _roots(opts.source), inputs=dataset)

    def prepare(self, built: Built, progress=None) -> None:
        from .model_fn import check_function

        check_function(built.study.objective["model_fn"], built.study.space, built.inputs, progress)

    # ------------------------------------------------------------ a study of this kind
    def own_space(self, study) -> dict:
        raise ConfigError(f"--model-fn {study.objective.get('model_fn')} has no search space of its own")

    def check_final(self, study, allow_user_code: bool) -> None:
        if not allow_user_code:
            raise ConfigError(f"study {study.name!r} trains the model function {study.objective.get('model_fn')} "
                              "named in the database; `final` imports it only with --allow-user-code")
