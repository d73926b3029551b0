"""The model zoo: search spaces and Keras builders for image classifiers.

>>> from mongotune.models import get_model, make_optimizer
>>> model_def = get_model("convstrix")
>>> space = model_def.space((28, 28, 1))          # a hyperopt space
>>> model = model_def.build(params, (28, 28, 1), num_classes=10)

Every model takes raw ``uint8`` images and rescales them itself, so an
exported ``.keras`` file predicts on what the dataset stores.  Importing this
package registers the custom layers, which ``keras.saving.load_model`` needs
to read such a file back.

Models: ``baseline`` (MLP), ``convstrix`` (VGG-style CNN from scratch),
``vggstrix`` (frozen VGG19 + head), ``hyperresnet`` (architecture as
hyper-parameters, optional fine/coarse heads).
"""

from mongotune.models._common import make_optimizer
from mongotune.models._registry import ModelDef, available_models, get_model, register
from mongotune.models.augment import (
    RandomApply,
    augmentation_layers,
    augmentation_space,
    with_augmentation,
)
from mongotune.models.memory import estimate_memory

# importing the model modules registers them
from mongotune.models import baseline as _baseline  # noqa: E402,F401
from mongotune.models import convstrix as _convstrix  # noqa: E402,F401
from mongotune.models import hyperresnet as _hyperresnet  # noqa: E402,F401
from mongotune.models import vggstrix as _vggstrix  # noqa: E402,F401
from mongotune.models.vggstrix import GrayscaleToRGB, VGGPreprocess  # noqa: E402

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
    "make_optimizer",
    "register",
    "with_augmentation",
]
