"""Helpers shared by every model of the zoo.

* reading hyper-parameters out of the loosely typed dicts that hyperopt hands
  over (``quniform`` values are floats, choices may be nested dicts), with a
  :class:`~mongotune.errors.ConfigError` naming the model and the key when a
  value is missing or out of range;
* the common input stem (raw ``uint8`` images -> float in [0, 1] -> optional
  online augmentation);
* the fully connected head used by ConvStrix and VGGStrix;
* :func:`make_optimizer`.

Everything here uses the backend-neutral ``keras`` API only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
from hyperopt import hp
from hyperopt.pyll import scope

from mongotune.errors import ConfigError

#: Activations the spaces offer; anything Keras knows is accepted by build().
ACTIVATIONS = ("relu", "selu", "tanh", "elu")

#: canonical optimizer name -> (Keras class name, number of per-weight slots)
_OPTIMIZERS = {
    "adam": ("Adam", 2),
    "adamax": ("Adamax", 2),
    "nadam": ("Nadam", 2),
    "rmsprop": ("RMSprop", 1),
    "sgd": ("SGD", 0),
}


# --------------------------------------------------------------------------
# optimizers
# --------------------------------------------------------------------------


def canonical_optimizer(name: str) -> str:
    """``'RMS-prop'`` -> ``'rmsprop'``; unknown names raise ConfigError."""
    if not isinstance(name, str):
        raise ConfigError(f"optimizer must be a name, got {name!r}")
    key = name.strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    if key not in _OPTIMIZERS:
        raise ConfigError(
            f"unknown optimizer {name!r}; choose from: {', '.join(_OPTIMIZERS)}"
        )
    return key


def optimizer_slots(name: str) -> int:
    """How many extra tensors of the size of the weights the optimizer keeps."""
    return _OPTIMIZERS[canonical_optimizer(name)][1]


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    """A fresh Keras optimizer: ``adam``, ``adamax``, ``nadam``, ``rmsprop``.

    ``rms-prop`` (the spelling in the original experiments) and any
    capitalisation are accepted as well.
    """
    key = canonical_optimizer(name)
    try:
        lr = float(learning_rate)
    except (TypeError, ValueError):
        raise ConfigError(f"learning rate must be a number, got {learning_rate!r}") from None
    if not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"learning rate must be a positive number, got {learning_rate!r}")
    cls = getattr(keras.optimizers, _OPTIMIZERS[key][0])
    return cls(learning_rate=lr)


# --------------------------------------------------------------------------
# space helpers
# --------------------------------------------------------------------------


def int_range(label: str, low: int, high: int):
    """An integer hyper-parameter, every value of [low, high] equally likely;
    a constant when the range holds one value (hyperopt rejects empty ranges).

    The underlying uniform reaches 0.49 past either end so that, after
    rounding, the end values are as likely as the inner ones.
    """
    if high <= low:
        return low
    return scope.int(hp.quniform(label, low - 0.49, high + 0.49, 1))


# --------------------------------------------------------------------------
# reading params
# --------------------------------------------------------------------------

_MISSING = object()


class Params:
    """Typed, validated access to one trial's hyper-parameters.

    >>> p = Params("convstrix", {"num_blocks": 3.0})
    >>> p.int("num_blocks", 1, 6)
    3
    """

    def __init__(self, model: str, params: Mapping[str, Any]):
        if not isinstance(params, Mapping):
            raise ConfigError(f"{model}: hyper-parameters must be a dict, got {type(params).__name__}")
        self.model = model
        self.params = params

    def _fail(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.model}: hyper-parameter '{key}' {msg}")

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        if key in self.params:
            return self.params[key]
        if default is _MISSING:
            raise self._fail(key, "is missing")
        return default

    def has(self, key: str) -> bool:
        return key in self.params

    def int(self, key: str, low: int | None = None, high: int | None = None,
            default: Any = _MISSING) -> int:
        value = self.raw(key, default)
        return self.as_int(key, value, low, high)

    def as_int(self, key: str, value: Any, low: int | None = None,
               high: int | None = None) -> int:
        if isinstance(value, (bool, np.bool_)):
            raise self._fail(key, f"must be an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise self._fail(key, f"must be an integer, got {value!r}") from None
        if not math.isfinite(f) or abs(f - round(f)) > 1e-6:
            raise self._fail(key, f"must be an integer, got {value!r}")
        n = int(round(f))
        self._check_range(key, n, low, high)
        return n

    def float(self, key: str, low: float | None = None, high: float | None = None,
              default: Any = _MISSING, *, low_open: bool = False,
              high_open: bool = False) -> float:
        value = self.raw(key, default)
        return self.as_float(key, value, low, high, low_open=low_open, high_open=high_open)

    def as_float(self, key: str, value: Any, low: float | None = None,
                 high: float | None = None, *, low_open: bool = False,
                 high_open: bool = False) -> float:
        if isinstance(value, (bool, np.bool_)):
            raise self._fail(key, f"must be a number, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise self._fail(key, f"must be a number, got {value!r}") from None
        if not math.isfinite(f):
            raise self._fail(key, f"must be finite, got {value!r}")
        if low is not None and (f < low or (low_open and f == low)):
            raise self._fail(key, f"must be {'>' if low_open else '>='} {low}, got {f:g}")
        if high is not None and (f > high or (high_open and f == high)):
            raise self._fail(key, f"must be {'<' if high_open else '<='} {high}, got {f:g}")
        return f

    def bool(self, key: str, default: Any = _MISSING) -> bool:
        value = self.raw(key, default)
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if isinstance(value, (int, float, np.integer, np.floating)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.strip().lower() in ("true", "yes", "1")
        raise self._fail(key, f"must be true or false, got {value!r}")

    def choice(self, key: str, options: Sequence[str], default: Any = _MISSING) -> str:
        value = self.raw(key, default)
        if isinstance(value, str):
            norm = value.strip().lower()
            for opt in options:
                if norm == opt.lower():
                    return opt
        raise self._fail(key, f"must be one of {', '.join(options)}; got {value!r}")

    def activation(self, key: str = "activation") -> str:
        value = self.raw(key)
        if not isinstance(value, str):
            raise self._fail(key, f"must be an activation name, got {value!r}")
        name = value.strip().lower()
        try:
            keras.activations.get(name)
        except (ValueError, TypeError):
            raise self._fail(key, f"is not an activation Keras knows: {value!r}") from None
        return name

    def optimizer(self, key: str = "optimizer") -> str:
        try:
            return canonical_optimizer(self.raw(key))
        except ConfigError as exc:
            raise self._fail(key, str(exc)) from None

    def _check_range(self, key, n, low, high):
        if low is not None and n < low:
            raise self._fail(key, f"must be >= {low}, got {n}")
        if high is not None and n > high:
            raise self._fail(key, f"must be <= {high}, got {n}")


# --------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------


def check_input_shape(model: str, input_shape: Sequence[int], min_size: int) -> tuple[int, int, int]:
    """Validate ``(H, W, C)``; both H and W must be at least ``min_size``."""
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ConfigError(f"{model}: input shape must be (height, width, channels), got {input_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"{model}: input shape must be (height, width, channels), got {input_shape!r}")
    h, w, _ = shape
    if min(h, w) < min_size:
        raise ConfigError(
            f"{model}: needs images of at least {min_size}x{min_size} pixels, got {h}x{w}"
        )
    return shape


def check_num_classes(model: str, num_classes: Any, what: str = "num_classes") -> int:
    try:
        n = int(num_classes)
    except (TypeError, ValueError):
        raise ConfigError(f"{model}: {what} must be an integer, got {num_classes!r}") from None
    if n != num_classes or n < 2:
        raise ConfigError(f"{model}: {what} must be an integer >= 2, got {num_classes!r}")
    return n


# --------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------


def kernel_initializer(activation: str) -> str:
    """SELU needs LeCun-normal weights to self-normalise; others use Glorot."""
    return "lecun_normal" if activation == "selu" else "glorot_uniform"


def image_stem(input_shape: tuple[int, int, int], params: Mapping[str, Any]):
    """``(inputs, x)``: the raw-uint8 input and the rescaled, augmented tensor.

    The model's first layer turns 0..255 integers into floats in [0, 1], so
    an exported model is fed exactly what the dataset stores.  Augmentation
    layers (if the params ask for any) follow; they are identities at
    inference.
    """
    from mongotune.models.augment import augmentation_layers

    inputs = keras.Input(shape=input_shape, dtype="uint8", name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    for layer in augmentation_layers(params):
        x = layer(x)
    return inputs, x


def dense_head(x, *, num_layers: int, units: int, dropout: float, activation: str,
               prefix: str = "fc", kernel_regularizer=None):
    """Flatten followed by ``num_layers`` x (Dense -> Dropout)."""
    if len(x.shape) > 2:
        x = keras.layers.Flatten(name=f"{prefix}_flatten")(x)
    init = kernel_initializer(activation)
    for i in range(num_layers):
        x = keras.layers.Dense(units, activation=activation, kernel_initializer=init,
                               kernel_regularizer=kernel_regularizer,
                               name=f"{prefix}_{i + 1}")(x)
        if dropout > 0:
            x = keras.layers.Dropout(dropout, name=f"{prefix}_{i + 1}_dropout")(x)
    return x


def softmax_output(x, num_classes: int, name: str = "output", kernel_regularizer=None):
    # float32 even under a mixed-precision policy: a float16 softmax loses
    # small probabilities and makes the cross-entropy unstable.
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                              kernel_regularizer=kernel_regularizer, name=name)(x)
