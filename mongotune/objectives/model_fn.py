"""The user's own Keras model: ``--model-fn package.module:build_model``.

``build_model(params, input_shape, num_classes) -> keras.Model`` is called
once per trial with that trial's params, the images' shape (height, width,
channels of raw uint8 pixels) and the number of classes.  It returns an
uncompiled model with one output, a softmax over ``num_classes``; the
standard Keras trial compiles it (the params' ``optimizer``, default adam,
and ``learning_rate``, default 1e-3) and trains it like a built-in model.

The study stores only the reference (a string).  A worker imports it by
name, and only when it was started with ``--allow-user-code``; nothing is
ever pickled.  ``launch`` imports it and builds it once before writing the
study (``check_function``), so a typo is one ``error:`` line, not a study of
failed trials.  The kind itself (launch options, study, final) is
``keras_launch.ModelFnKind``.
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Callable

from ..errors import ConfigError
from ..models._registry import ModelDef

_REF = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
DEFAULT_LEARNING_RATE = 1e-3


def check_ref(ref: str) -> str:
    if not isinstance(ref, str) or not _REF.match(ref.strip()):
        raise ConfigError(f"--model-fn {ref!r}: expected package.module:function (e.g. my_models:build_model)")
    return ref.strip()


def import_model_fn(ref: str) -> Callable:
    """Import ``package.module:function``; ConfigError (one line) if that fails."""
    module_name, _, attr = check_ref(ref).partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - whatever the user's module raises on import
        hint = "; is its folder on PYTHONPATH?" if isinstance(exc, ModuleNotFoundError) else ""
        raise ConfigError(f"--model-fn {ref}: cannot import {module_name} ({type(exc).__name__}: "
                          f"{_first_line(exc)}){hint}") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise ConfigError(f"--model-fn {ref}: {module_name} has no {attr}")
    if not callable(fn):
        raise ConfigError(f"--model-fn {ref}: {attr} is a {type(fn).__name__}, not a function")
    return fn


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


class FunctionModel(ModelDef):
    """A model definition backed by the user's function (what the Keras trial builds and compiles)."""

    description = "the user's build_model(params, input_shape, num_classes)"

    def __init__(self, ref: str, fn: Callable | None = None):
        self.ref = check_ref(ref)
        self.name = self.ref
        self._fn = fn

    @property
    def fn(self) -> Callable:
        if self._fn is None:
            self._fn = import_model_fn(self.ref)
        return self._fn

    def space(self, input_shape, *, augment: bool = False) -> dict:
        raise ConfigError(f"--model-fn {self.ref} has no search space of its own: give --space FILE")

    def build(self, params: dict, input_shape, num_classes: int, *, num_coarse_classes: int | None = None,
              weights: str | None = None):
        import keras

        shape = tuple(int(d) for d in input_shape)
        try:
            model = self.fn(dict(params), shape, int(num_classes))
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's function failed for these params
            raise ConfigError(f"--model-fn {self.ref} raised {type(exc).__name__}: {_first_line(exc)}") from exc
        if not isinstance(model, keras.Model):
            raise ConfigError(f"--model-fn {self.ref} returned a {type(model).__name__}, not a keras.Model")
        outputs = model.outputs or []
        if len(outputs) != 1:
            raise ConfigError(f"--model-fn {self.ref}: the model must have one output, it has {len(outputs)}")
        units = outputs[0].shape[-1]
        if units != num_classes:
            raise ConfigError(f"--model-fn {self.ref}: the model's output has {units} units, the dataset "
                              f"{num_classes} classes")
        return model

    def learning_rate(self, params: dict) -> float:
        value = params.get("learning_rate", DEFAULT_LEARNING_RATE)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"--model-fn {self.ref}: learning_rate must be a number, got {value!r}") from None


def sample_params(space: dict, seed: int = 0) -> dict:
    """One point of a JSON space, as a trial would get it."""
    import numpy as np
    from hyperopt.pyll.stochastic import sample

    from ..search.spaces import build

    return sample(build(space), rng=np.random.default_rng(seed))


def check_at_launch(ref: str, space: dict | None, input_shape, num_classes: int) -> dict:
    """Import the function and build one model from a sampled point of ``space``; ConfigError if not.

    Returns a summary (``{"params": ..., "parameters": count}``) for the launch to show.
    """
    if not space:
        raise ConfigError(f"--model-fn {ref} needs a search space: give --space FILE")
    model_def = FunctionModel(ref)
    params = sample_params(space)
    model = model_def.build(params, input_shape, num_classes)
    summary: dict[str, Any] = {"params": params, "parameters": int(model.count_params())}
    import keras

    keras.backend.clear_session()
    return summary


def check_function(ref: str, space: dict, dataset, progress=None) -> dict:
    """At launch, after the study's settings passed: the data (fetched if missing; ``progress`` shows a
    download), then the function imported and one model built from a sampled point of ``space``."""
    from .._quiet import import_keras_quietly, native_stderr_silenced
    from ..data import fetch, load

    fetch(dataset, None, progress)
    data = load(dataset)
    import_keras_quietly()
    with native_stderr_silenced():  # TensorFlow's native chatter, if the user's module loads more of it
        return check_at_launch(ref, space, tuple(data.input_shape), data.num_classes)
