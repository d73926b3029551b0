"""``mongotune recipes``: what ``launch MODEL`` runs by default, and what the seed reported.

    mongotune recipes                          every recipe, one row each
    mongotune recipes vggstrix                 one recipe: its settings, where they come from
    mongotune recipes vggstrix dataset=digits  what `launch vggstrix --dataset digits` would run

"""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import ConfigError
from ._common import _user_errors, app, err


def _out() -> Console:
    """stdout; wide when it is not a terminal, so that piped tables are not squeezed."""
    console = Console(soft_wrap=True)
    return console if console.is_terminal else Console(soft_wrap=True, width=160)


out = _out()

_INT_OPTIONS = ("size", "channels", "seed", "epochs", "patience", "max_evals")
_FLOAT_OPTIONS = ("val_fraction",)


def _parse_options(pairs: list[str]) -> dict:
    """``["dataset=digits", "size=32"]`` -> ``{"dataset": "digits", "size": 32}``."""
    from ..models.recipes import OPTIONS

    options: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"recipe options are KEY=VALUE, got {pair!r}")
        if key not in OPTIONS:
            raise ConfigError(f"unknown recipe option {key!r}; choose from: {', '.join(OPTIONS)}")
        value = value.strip()
        try:
            if key in _INT_OPTIONS:
                options[key] = int(value)
            elif key in _FLOAT_OPTIONS:
                options[key] = float(value)
            else:
                options[key] = value
        except ValueError:
            raise ConfigError(f"recipe option {key} must be a number, got {value!r}") from None
    return options


def _table_of_recipes() -> Table:
    from ..models.recipes import RECIPES, describe

    t = Table(title="recipes: `mongotune launch MODEL` runs the seed's experiment; any option overrides its part",
              show_lines=True)
    for col in ("model", "data", "each trial", "search", "the seed reported"):
        t.add_column(col, overflow="fold")
    for name in sorted(RECIPES):
        d = describe(RECIPES[name])
        t.add_row(
            d["model"],
            f"{d['dataset']}\n{d['images']}\n{d['validation']} held out",
            f"{d['epochs']} epochs\npatience {d['patience']}\nloss {d['loss']}",
            f"{d['trials']} trials\nbatch {d['batch sizes']}\nweights {d['weights']}",
            d["seed reported"],
        )
    return t


def _show_one(model: str, options: dict) -> None:
    from ..models.recipes import describe, get_recipe, resolve_launch

    recipe = get_recipe(model)
    if recipe is None:
        from ..models.recipes import available_recipes

        raise ConfigError(f"no recipe for {model!r}; recipes: {', '.join(available_recipes())}")
    d = describe(recipe)
    out.print(f"[bold]{recipe.model}[/]: the seed reported {d['seed reported']}", highlight=False)
    out.print(f"source: {d['source']}", highlight=False)
    for key in ("dataset", "images", "validation", "epochs", "patience", "loss", "trials", "batch sizes",
                "weights", "space"):
        out.print(f"  {key:12s} {d[key]}", highlight=False)
    if recipe.notes:
        out.print("where the settings come from:")
        for note in recipe.notes:
            out.print(f"  - {note}", highlight=False)
    if options:
        from .._quiet import import_keras_quietly

        import_keras_quietly()
        settings = resolve_launch(recipe.model, options)
        for notice in settings.notices:
            err.print(f"note: {notice}", highlight=False, soft_wrap=True)
        ds = settings.dataset
        out.print(f"with {' '.join(f'{k}={v}' for k, v in options.items())}, launch would run:", highlight=False)
        size = "native" if ds["size"] is None else f"{ds['size']}x{ds['size']}"
        channels = "native" if ds["channels"] is None else str(ds["channels"])
        rows = {
            "dataset": f"{ds['name']} ({size}, channels {channels}, {ds['interpolation']}, "
                       f"validation {ds['val_fraction']:.0%})",
            "epochs": settings.epochs, "patience": settings.patience, "loss": settings.loss,
            "trials": settings.max_evals, "weights": settings.weights or "-",
            "space": settings.space_variant,
        }
        for key, value in rows.items():
            out.print(f"  {key:12s} {value}", highlight=False)


@app.command()
def recipes(
    model: Optional[str] = typer.Argument(None, help="Show one model's recipe."),
    options: Optional[list[str]] = typer.Argument(None, metavar="[KEY=VALUE]...",
                                                  help="Launch options to resolve against the recipe "
                                                       "(dataset=digits size=32 ...)."),
):
    """The seed experiment `mongotune launch MODEL` runs by default, and the accuracy the seed reported."""
    with _user_errors():
        parsed = _parse_options(options or [])
        if model is None:
            if parsed:
                raise ConfigError("recipe options need a model: mongotune recipes MODEL KEY=VALUE ...")
            out.print(_table_of_recipes())
            out.print("`mongotune recipes MODEL` shows where each setting comes from; "
                      "`mongotune recipes MODEL KEY=VALUE ...` what a launch with those options runs.")
            return
        _show_one(model, parsed)
