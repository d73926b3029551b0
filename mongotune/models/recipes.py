"""Recipes: each model's seed experiment as the defaults of ``mongotune launch MODEL``.

A recipe records what the experiment the model comes from did: the dataset
and how it was pre-processed (size, channels, interpolation, validation
split), how each trial trained (epochs, early-stopping patience, the loss
handed to the search), the budget, the pre-trained weights, the search space
(with its batch sizes), and the accuracy the seed reported, with its source.

:func:`resolve_launch` turns "recipe + the options the user gave" into the
settings of one launch, plus one-line notices for what it adapted:

* every option the user gave wins over its part of the recipe;
* the image settings (size, channels, interpolation, validation split) of a
  recipe belong to its dataset: with another ``--dataset`` they fall back to
  that dataset's native images and the defaults (area, 10 %);
* images smaller than the model needs, or grayscale where it wants RGB, are
  resized / converted (what the seeds did: Fashion-MNIST was resized to
  128x128 before any model saw it) unless ``--size`` / ``--channels`` say
  otherwise; a notice says so;
* a model whose seed space does not fit small inputs searches its
  small-input space there (see ``ModelDef.is_small_input``); a notice says so;
* weights that would leave frozen layers random are refused
  (``ModelDef.check_weights``).

:func:`check_launch_inputs` then makes sure the data and the weights are
here (downloading what is missing), so that an offline launch fails before
it writes a study, with one line naming ``--source`` / ``--weights``.

Nothing here imports TensorFlow until a model has to be looked up, so
listing recipes is instant.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from mongotune.errors import ConfigError, DataError, UserError

#: Defaults of the parts a recipe does not set (and of the image settings
#: when the dataset is not the recipe's).
DEFAULT_INTERPOLATION = "area"
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_MAX_EVALS = 20
LOSSES = ("neg_val_accuracy", "neg_val_accuracy_squared", "val_loss")

#: The options :func:`resolve_launch` takes (the launch options a recipe covers,
#: plus the data-only ones it needs to build the dataset spec).
OPTIONS = ("dataset", "size", "channels", "interpolation", "val_fraction", "source", "seed",
           "epochs", "patience", "loss", "weights", "max_evals")
#: Of those, the ones that belong to the recipe's dataset.
IMAGE_OPTIONS = ("size", "channels", "interpolation", "val_fraction")


@dataclass(frozen=True)
class Reported:
    """What a seed experiment reported, and where."""

    accuracy: dict[str, float]  # e.g. {"test": 0.919} or {"fine": 0.6761, "coarse": 0.7731}
    split: str  # which images the accuracy was measured on
    source: str  # the document it comes from

    def text(self) -> str:
        values = ", ".join((f"{k} " if k != "test" else "") + f"{v * 100:.4g}%"
                           for k, v in self.accuracy.items())
        return f"{values} ({self.split})"


@dataclass(frozen=True)
class Recipe:
    """One model's seed experiment."""

    model: str
    dataset: str
    size: int | None  # None: the dataset's own
    channels: int | None  # None: the dataset's own
    interpolation: str
    val_fraction: float
    epochs: int
    patience: int
    loss: str
    max_evals: int | None  # None: the seed does not say; launch's default
    weights: str | None
    space: str  # "seed": the model's seed space (ModelDef.space(variant="seed"))
    batch_sizes: str  # the seed space's batch sizes, as the seed wrote them
    reported: Reported
    notes: tuple[str, ...] = ()  # where a setting was inferred or differs from the seed

    def settings(self) -> dict[str, Any]:
        """The launch options this recipe sets, by option name."""
        return {"dataset": self.dataset, "size": self.size, "channels": self.channels,
                "interpolation": self.interpolation, "val_fraction": self.val_fraction,
                "epochs": self.epochs, "patience": self.patience, "loss": self.loss,
                "max_evals": self.max_evals, "weights": self.weights}


_SERIES_II = "guidj, 'Fashion, Trees, and Convolutions: Part II - Baseline' (2020)"
_SERIES_III = "guidj, 'Fashion, Trees, and Convolutions: Part III - Convolutions' (2020)"
_CIFAR = "Hyperopt-Keras-CNN-CIFAR-100 README, 'Best result' (guillaume-chevalier / Vooban)"

_SERIES_NOTES = (
    "size 128: Part I resized the 28x28 images to 128x128 so that deep networks fit",
    "interpolation linear: the series resized with OpenCV (OpenCV's default is bilinear)",
    "validation 20 %: Part II's epochs took 750 steps at batch 64, i.e. 48,000 of the 60,000 "
    "training images",
    "loss neg_val_accuracy_squared: the series squared the validation accuracy",
)

RECIPES: dict[str, Recipe] = {
    "baseline": Recipe(
        model="baseline", dataset="fashion_mnist", size=128, channels=1, interpolation="linear",
        val_fraction=0.2, epochs=50, patience=5, loss="neg_val_accuracy_squared", max_evals=100,
        weights=None, space="seed", batch_sizes="16, 32, 64, 128",
        reported=Reported({"test": 0.853}, "Fashion-MNIST test set, 10,000 images", _SERIES_II),
        notes=_SERIES_NOTES + (
            "epochs 50, budget 100 trials: Part II",
            "patience 5: Part III's early stopping, used for the whole series here",
            "channels 1: the series converted to RGB only for VGG19",
        ),
    ),
    "convstrix": Recipe(
        model="convstrix", dataset="fashion_mnist", size=128, channels=1, interpolation="linear",
        val_fraction=0.2, epochs=50, patience=5, loss="neg_val_accuracy_squared", max_evals=50,
        weights=None, space="seed", batch_sizes="16, 32, 64",
        reported=Reported({"test": 0.936}, "Fashion-MNIST test set, 10,000 images", _SERIES_III),
        notes=_SERIES_NOTES + (
            "budget 50 trials, patience 5: Part III",
            "epochs 50: Part III gives no maximum; Part II's 50",
            "channels 1: the series converted to RGB only for VGG19",
        ),
    ),
    "vggstrix": Recipe(
        model="vggstrix", dataset="fashion_mnist", size=128, channels=3, interpolation="linear",
        val_fraction=0.2, epochs=50, patience=5, loss="neg_val_accuracy_squared", max_evals=50,
        weights="imagenet", space="seed", batch_sizes="16, 32, 64",
        reported=Reported({"test": 0.919}, "Fashion-MNIST test set, 10,000 images", _SERIES_III),
        notes=_SERIES_NOTES + (
            "budget 50 trials, patience 5, ImageNet VGG19: Part III (most trials stopped before epoch 20)",
            "epochs 50: Part III gives no maximum; Part II's 50",
        ),
    ),
    "hyperresnet": Recipe(
        model="hyperresnet", dataset="cifar100", size=None, channels=None,
        interpolation=DEFAULT_INTERPOLATION, val_fraction=0.1, epochs=100, patience=100,
        loss="neg_val_accuracy", max_evals=None, weights=None, space="seed",
        batch_sizes="100 to 700 in steps of 5",
        reported=Reported({"fine": 0.6761, "coarse": 0.7731},
                          "CIFAR-100 test set, best epoch", _CIFAR),
        notes=(
            "fine and coarse heads: CIFAR-100 carries both label sets; the coarse loss is "
            "weighted by the searched coarse_labels_weight",
            "epochs 100, no early stopping (patience = epochs): the repository's neural_net.py "
            "trains 100 epochs and reports the best one",
            "validation 10 %: the seed validated on the test set; here the test set stays for "
            "`mongotune final`",
            "loss neg_val_accuracy: the seed minimised minus the best fine accuracy",
            "pre-processing: the seed's random left-right flip is part of the space (aug_flip)",
            "budget: the seed does not say; launch's default",
        ),
    ),
}


def get_recipe(model: str) -> Recipe | None:
    """The recipe of ``model`` (case-insensitive); None for a model without one."""
    return RECIPES.get(model.strip().lower()) if isinstance(model, str) else None


def available_recipes() -> list[str]:
    return sorted(RECIPES)


# ---------------------------------------------------------------- resolving a launch


@dataclass
class LaunchSettings:
    """What one ``launch`` runs: the recipe's parts, the user's options, the adaptations."""

    model: str
    recipe: str | None
    dataset: dict  # a DataSpec dict
    epochs: int
    patience: int
    loss: str
    weights: str | None
    max_evals: int
    space_variant: str  # "seed" or "small": which of the model's spaces it searches
    input_shape: tuple[int, int, int] | None  # the images the model gets (None: unknown here)
    origins: dict[str, str] = field(default_factory=dict)  # option -> recipe | user | default | adapted
    notices: list[str] = field(default_factory=list)  # one line each, for the CLI to print

    def data_spec(self):
        from mongotune.data import DataSpec

        return DataSpec.from_dict(self.dataset)


def _check_options(overrides: dict) -> dict:
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"recipe options must be a mapping, got {type(overrides).__name__}")
    unknown = sorted(str(k) for k in overrides if k not in OPTIONS)
    if unknown:
        raise ConfigError(f"unknown recipe option(s): {', '.join(unknown)}; "
                          f"choose from: {', '.join(OPTIONS)}")
    return {k: v for k, v in overrides.items() if v is not None}


def _int_option(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        if isinstance(value, float) and value.is_integer() and value >= low:
            return int(value)
        flag = "--" + name.replace("_", "-")
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ConfigError(f"{flag} must be {what}, got {value!r}")
    return value


def _peek_npz(path: str) -> tuple[int, int, int] | None:
    """(H, W, C) of the ``x`` array of an .npz file, from its header alone."""
    import zipfile

    import numpy as np

    try:
        with zipfile.ZipFile(os.path.expanduser(path)) as zf, zf.open("x.npy") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if major == 1
                           else np.lib.format.read_array_header_2_0)
            shape, _, _ = read_header(fh)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None  # preparing the data will say what is wrong
    if len(shape) == 3:
        return int(shape[1]), int(shape[2]), 1
    if len(shape) == 4:
        return int(shape[1]), int(shape[2]), min(int(shape[3]), 3)
    return None


def _native_shape(dataset: str, source: str | None) -> tuple[int, int, int] | None:
    from mongotune.data import native_shape

    shape = native_shape(dataset)
    if shape is None and dataset == "npz" and source:
        shape = _peek_npz(source)
    return shape


def resolve_launch(model, overrides: dict | None = None) -> LaunchSettings:
    """The settings of ``launch MODEL`` given the options the user set explicitly.

    ``model`` is a registered model's name or a ``ModelDef`` (one without a
    recipe, such as a user's function, gets the defaults and the adaptation).

    ``overrides`` maps option names (:data:`OPTIONS`) to values; ``None``
    means "not given" (take it from the recipe).  Raises ConfigError for an
    unknown option or model, bad values, weights that would freeze random
    layers, and images the model cannot take; DataError for a bad dataset
    spec.  Downloads nothing (see :func:`check_launch_inputs`).
    """
    given = _check_options(overrides)
    from mongotune.models import ModelDef, get_model

    model_def = model if isinstance(model, ModelDef) else get_model(model)
    recipe = get_recipe(model_def.name)
    base = recipe.settings() if recipe else {}
    origins: dict[str, str] = {}
    notices: list[str] = []

    def pick(name: str, fallback: Any, *, recipe_applies: bool = True) -> Any:
        if name in given:
            origins[name] = "user"
            return given[name]
        if recipe_applies and base.get(name) is not None:
            origins[name] = "recipe"
            return base[name]
        origins[name] = "default"
        return fallback

    dataset = pick("dataset", "digits")
    if not isinstance(dataset, str):
        raise ConfigError(f"--dataset must be a name, got {dataset!r}")
    same_data = recipe is not None and dataset == recipe.dataset
    size = pick("size", None, recipe_applies=same_data)
    channels = pick("channels", None, recipe_applies=same_data)
    interpolation = pick("interpolation", DEFAULT_INTERPOLATION, recipe_applies=same_data)
    val_fraction = pick("val_fraction", DEFAULT_VAL_FRACTION, recipe_applies=same_data)
    source = given.get("source")
    seed = _int_option("seed", given.get("seed", 0), 0)
    epochs = _int_option("epochs", pick("epochs", 50), 1)
    patience = _int_option("patience", pick("patience", 5), 0)
    loss = pick("loss", "neg_val_accuracy")
    if loss not in LOSSES:
        raise ConfigError(f"unknown loss {loss!r}; choose from: {', '.join(LOSSES)}")
    max_evals = _int_option("max_evals", pick("max_evals", DEFAULT_MAX_EVALS), 1)
    weights = pick("weights", None)
    if isinstance(weights, str) and weights.strip().lower() in ("", "none"):
        weights = None
    weights = model_def.check_weights(weights)

    # inputs adapt to the model, unless the user said otherwise
    native = _native_shape(dataset, source)
    shape = None
    if native is not None:
        h, w, c = native
        if size is not None:
            h = w = int(size)
        if channels is not None:
            c = int(channels)
        changes = []
        if "size" not in given and min(h, w) < model_def.min_input_size:
            size = h = w = model_def.min_input_size
            origins["size"] = "adapted"
            if "interpolation" not in given and recipe is not None and recipe.size is not None:
                interpolation = recipe.interpolation  # resize the way the seed did
                origins["interpolation"] = "recipe"
            changes.append(f"resizing them to {size}x{size} ({interpolation})")
        want_c = model_def.input_channels
        if "channels" not in given and want_c is not None and c != want_c:
            channels = c = want_c
            origins["channels"] = "adapted"
            changes.append("converting them to RGB" if want_c == 3 else f"converting them to {want_c} channel(s)")
        if changes:
            nh, nw, nc = native
            wants = (f"at least {model_def.min_input_size}x{model_def.min_input_size}"
                     + (" RGB" if want_c == 3 else ""))
            notices.append(f"{model_def.name} needs {wants} images; {dataset} has {nh}x{nw}x{nc}: "
                           f"{' and '.join(changes)} (--size/--channels override)")
        shape = (h, w, c)

    from mongotune.data import DataSpec

    spec = DataSpec(name=dataset, size=size, channels=channels, interpolation=interpolation,
                    val_fraction=val_fraction, seed=seed, source=source)
    variant = "seed"
    if shape is not None:
        from mongotune.models._common import check_input_shape

        # images the model cannot take fail here, with the reason
        check_input_shape(model_def.name, shape, model_def.min_input_size)
        variant = model_def.space_variant(shape)
        if variant == "small":
            notices.append(f"{model_def.name}: {shape[0]}x{shape[1]}x{shape[2]} images are small for the "
                           f"seed's space; searching the small-input space")
    return LaunchSettings(model=model_def.name, recipe=recipe.model if recipe else None,
                          dataset=spec.to_dict(), epochs=epochs, patience=patience, loss=loss,
                          weights=weights, max_evals=max_evals, space_variant=variant, input_shape=shape,
                          origins=origins, notices=notices)


def check_launch_inputs(settings: LaunchSettings, cache_dir: str | os.PathLike | None = None,
                        progress=None) -> None:
    """Make sure the data and the weights of ``settings`` are here; download what is missing.

    Raises one UserError naming every input that cannot be had (offline: the
    data with ``--source``, the weights with ``--weights``); a weights file
    that does not fit the model is a ConfigError.
    """
    from mongotune.data import fetch

    problems: list[str] = []
    try:
        fetch(settings.data_spec(), cache_dir, progress)
    except DataError as exc:
        problems.append(str(exc))
    weights = settings.weights
    if weights is not None:
        try:
            _check_weights_here(settings.model, weights)
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise UserError("; ".join(" ".join(p.split()) for p in problems))


def _check_weights_here(model: str, weights: str) -> None:
    if model != "vggstrix":  # the only model that loads weights
        return
    from mongotune.models import vggstrix

    if weights == "imagenet":
        vggstrix.resolve_weights(weights)  # downloads into the Keras cache, checks the MD5
    else:
        vggstrix.check_weights_file(weights)


# ---------------------------------------------------------------- describing recipes


def describe(recipe: Recipe) -> dict[str, str]:
    """A recipe as short strings, for ``mongotune recipes``."""
    from mongotune.data import native_shape

    h, w, c = native_shape(recipe.dataset) or (None, None, None)
    size = f"{recipe.size or h}x{recipe.size or w}"
    channels = {1: "grayscale", 3: "RGB"}.get(recipe.channels or c, str(recipe.channels or c))
    how = f"resized ({recipe.interpolation})" if recipe.size and recipe.size != h else "native size"
    return {
        "model": recipe.model,
        "dataset": recipe.dataset,
        "images": f"{size} {channels}, {how}",
        "validation": f"{recipe.val_fraction:.0%} of train",
        "epochs": str(recipe.epochs),
        "patience": "none" if recipe.patience >= recipe.epochs else str(recipe.patience),
        "loss": recipe.loss,
        "trials": "launch default" if recipe.max_evals is None else str(recipe.max_evals),
        "batch sizes": recipe.batch_sizes,
        "weights": recipe.weights or "-",
        "space": recipe.space,
        "seed reported": recipe.reported.text(),
        "source": recipe.reported.source,
    }


def as_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)
