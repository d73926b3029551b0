"""The model zoo: search spaces and Keras builders for image classifiers.

>>> from mongotune.models import get_model, make_optimizer
>>> model_def = get_model("convstrix")
>>> space = model_def.space((28, 28, 1))          # a hyperopt space
>>> model = model_def.build(params, (28, 28, 1), num_classes=10)

Every model takes raw ``uint8`` images and rescales them itself, so an
exported ``.keras`` file predicts on what the dataset stores.

Importing this package does not import Keras: the recipes
(:mod:`mongotune.models.recipes`) are read without it.  The zoo (the model
modules, which register the custom layers that ``keras.saving.load_model``
needs to read a saved model back) loads on first use: :func:`get_model`,
:func:`available_models`, any other name of this package, or
:func:`load_zoo` explicitly.

Models: ``baseline`` (MLP), ``convstrix`` (VGG-style CNN from scratch),
``vggstrix`` (frozen VGG19 + head), ``hyperresnet`` (architecture as
hyper-parameters, optional fine/coarse heads).
"""

from __future__ import annotations

import importlib

from mongotune.models._registry import ModelDef, available_models, get_model, load_zoo, register

#: names served lazily (their modules import Keras) -> module that holds them
_LAZY = {
    "make_optimizer": "mongotune.models._common",
    "RandomApply": "mongotune.models.augment",
    "augmentation_layers": "mongotune.models.augment",
    "augmentation_space": "mongotune.models.augment",
    "with_augmentation": "mongotune.models.augment",
    "estimate_memory": "mongotune.models.memory",
    "GrayscaleToRGB": "mongotune.models.vggstrix",
    "VGGPreprocess": "mongotune.models.vggstrix",
}


def __getattr__(name: str):
    if name in _LAZY:
        load_zoo()
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "GrayscaleToRGB",
    "ModelDef",
    "RandomApply",
    "VGGPreprocess",
    "augmentation_layers",
    "augmentation_space",
    "available_models",
    "estimate_memory",
    "get_model",
    "load_zoo",
    "make_optimizer",
    "register",
    "with_augmentation",
]
