"""``vggstrix``: transfer learning on a frozen VGG19 convolutional base.

Layer stack (all inside the model, so an exported ``.keras`` file takes raw
``uint8`` images):

1. cast + rescale to [0, 1], optional augmentation (shared stem);
2. :class:`GrayscaleToRGB` repeats a single channel three times;
3. :class:`VGGPreprocess` does what ``keras.applications.vgg19.preprocess_input``
   does (RGB -> BGR, subtract the ImageNet channel means, on 0..255 values);
4. the VGG19 base (``include_top=False``), frozen;
5. optional extra 3x3 "valid" convolutions on VGG's output, chosen by the
   conditional ``conv`` hyper-parameter: none, one block of 1-3 layers, or
   2-3 blocks of one layer; batch normalisation between blocks;
6. the fully connected head of ConvStrix and a softmax layer.

VGG19 divides the image side by 32; each extra valid convolution removes 2
more pixels, so the space only offers as many extra convolutions as the
feature map can take (none at all for 32x32 .. 95x95 inputs).

Weights: ``"imagenet"`` fetches the published no-top file once into the
Keras cache (checked against its MD5), a path loads a local ``.h5`` file
(offline machines).  ``None`` is refused: a frozen, randomly initialised base
cannot learn (a study's trials would all end at chance).  ``"random"`` builds
one anyway, for shape checks and tests.
"""

from __future__ import annotations

import math
import os

import keras
import numpy as np
from hyperopt import hp

from mongotune.errors import ConfigError
from mongotune.models._common import image_stem, kernel_initializer
from mongotune.models._registry import ModelDef, register
from mongotune.models.convstrix import fcl_classifier, fcl_space, int_range

BATCH_SIZES = [16, 32, 64]
ACTIVATIONS = ["relu", "selu", "tanh"]
OPTIMIZERS = ["adam", "adamax", "nadam", "rmsprop"]

#: VGG19 without its classifier, ImageNet weights as published by Keras.
IMAGENET_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
    "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
)
IMAGENET_WEIGHTS_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_WEIGHTS_MD5 = "253f8cb515780f3b799900260a226db6"

#: ImageNet channel means in BGR order, as VGG was trained with ("caffe" mode)
BGR_MEANS = (103.939, 116.779, 123.68)
VGG_REDUCTION = 32  # five 2x2 poolings
MAX_EXTRA_CONVS = 3
EXTRA_FILTERS = 512


@keras.saving.register_keras_serializable(package="mongotune")
class GrayscaleToRGB(keras.layers.Layer):
    """Repeat a one-channel image into three identical channels; pass RGB through."""

    def call(self, inputs):
        if inputs.shape[-1] == 1:
            return keras.ops.repeat(inputs, 3, axis=-1)
        return inputs

    def compute_output_shape(self, input_shape):
        if input_shape[-1] == 1:
            return tuple(input_shape[:-1]) + (3,)
        return tuple(input_shape)


@keras.saving.register_keras_serializable(package="mongotune")
class VGGPreprocess(keras.layers.Layer):
    """ImageNet "caffe" preprocessing as a layer.

    Multiplies by ``scale`` (255 turns [0, 1] back into pixel values), swaps
    RGB to BGR and subtracts the per-channel ImageNet means.
    """

    def __init__(self, scale: float = 255.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype) * self.scale
        x = keras.ops.flip(x, axis=-1)
        means = keras.ops.convert_to_tensor(np.asarray(BGR_MEANS, dtype="float32"),
                                            dtype=self.compute_dtype)
        return x - means

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["scale"] = self.scale
        return config


def vgg_output_size(input_shape) -> int:
    """Side of VGG19's output feature map (the smaller one of H and W)."""
    return min(input_shape[:2]) // VGG_REDUCTION


def max_extra_convs(input_shape) -> int:
    """How many 3x3 valid convolutions VGG's output can take (capped at 3)."""
    size = vgg_output_size(input_shape)
    return max(0, min(MAX_EXTRA_CONVS, (size - 1) // 2))


#: ``weights=RANDOM`` builds the base with random weights, still frozen: a
#: model that cannot learn, for shape checks and tests only.  Studies refuse it
#: (and ``None``), see :meth:`VGGStrix.check_weights`.
RANDOM = "random"

FROZEN_RANDOM = (
    "vggstrix: the VGG19 base is frozen, so without pre-trained weights it stays random and "
    "every trial ends at chance accuracy; pass --weights imagenet, or --weights PATH to a VGG19 "
    "no-top .h5 file, or tune convstrix to train a VGG-style network from scratch"
)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def resolve_weights(weights: str | None) -> str | None:
    """Path of the ``.h5`` file to load into the VGG19 base; ``None`` for :data:`RANDOM`.

    ``None`` itself is refused: a frozen random base never learns.
    """
    if weights is None:
        raise ConfigError(FROZEN_RANDOM)
    if not isinstance(weights, (str, os.PathLike)):
        raise ConfigError(f"vggstrix: weights must be 'imagenet' or a file path, got {weights!r}")
    if str(weights) == RANDOM:
        return None
    if str(weights).strip().lower() == "imagenet":
        try:
            return keras.utils.get_file(
                IMAGENET_WEIGHTS_FILE,
                IMAGENET_WEIGHTS_URL,
                cache_subdir="models",
                file_hash=IMAGENET_WEIGHTS_MD5,
            )
        except Exception as exc:  # no network, proxy, bad hash ...
            raise ConfigError(
                f"vggstrix: could not fetch the ImageNet VGG19 weights from {IMAGENET_WEIGHTS_URL} "
                f"({_one_line(exc)}); download the file elsewhere and pass its path with --weights PATH"
            ) from None
    path = os.path.expanduser(os.fspath(weights))
    if not os.path.isfile(path):
        raise ConfigError(f"vggstrix: weights file not found: {path}")
    return path


def conv_params(p) -> tuple[int, int]:
    """``(num_blocks, block_size)`` from the nested ``conv`` choice (or flat keys)."""
    conv = p.raw("conv", None)
    if conv is None:
        conv = {k: p.raw(k) for k in ("num_blocks", "block_size") if p.has(k)}
    if not isinstance(conv, dict):
        raise ConfigError(f"vggstrix: hyper-parameter 'conv' must be a dict, got {conv!r}")
    num_blocks = p.as_int("conv.num_blocks", conv.get("num_blocks", 0), 0)
    block_size = p.as_int("conv.block_size", conv.get("block_size", 0), 0)
    if num_blocks > 0 and block_size < 1:
        raise ConfigError(f"vggstrix: conv.block_size must be >= 1 when num_blocks={num_blocks}")
    return num_blocks, (block_size if num_blocks else 0)


def check_weights_file(path: str, input_shape=(32, 32, 3)) -> None:
    """Load ``path`` into a VGG19 base: ConfigError (one line) when it does not fit."""
    import warnings

    h, w = input_shape[:2]
    try:
        with warnings.catch_warnings():  # Keras warns per layer it skips before it raises
            warnings.simplefilter("ignore")
            keras.applications.VGG19(include_top=False, weights=path, input_shape=(h, w, 3))
    except Exception as exc:  # wrong layer count or shapes, not HDF5, truncated ...
        raise ConfigError(
            f"vggstrix: {path} does not hold VGG19 no-top weights ({_one_line(exc)[:300]}); "
            f"pass --weights PATH to the file Keras publishes as {IMAGENET_WEIGHTS_FILE}"
        ) from None
    finally:
        keras.backend.clear_session()


class VGGStrix(ModelDef):
    name = "vggstrix"
    description = "frozen VGG19 base (ImageNet weights) + optional conv blocks + dense head"
    min_input_size = 32
    input_channels = 3
    takes_weights = True

    def check_weights(self, weights):
        """``'imagenet'`` or an existing file; anything that leaves the frozen base random is refused.

        Refused rather than trained unfrozen: unfreezing would turn the study
        into training VGG19 (20 M parameters, no batch normalisation) from
        scratch, a different and much slower experiment that convstrix
        already covers.
        """
        if weights is None or str(weights) == RANDOM:
            raise ConfigError(FROZEN_RANDOM)
        if not isinstance(weights, (str, os.PathLike)):
            raise ConfigError(f"vggstrix: weights must be 'imagenet' or a file path, got {weights!r}")
        if str(weights).strip().lower() == "imagenet":
            return "imagenet"
        path = os.path.abspath(os.path.expanduser(os.fspath(weights)))
        if not os.path.isfile(path):
            raise ConfigError(f"vggstrix: weights file not found: {path}")
        return path

    def _space(self, input_shape):
        top = max_extra_convs(input_shape)
        branches = [{"num_blocks": 0, "block_size": 0}]
        if top >= 1:
            branches.append({"num_blocks": 1, "block_size": int_range("block_size", 1, top)})
        if top >= 2:
            branches.append({"num_blocks": int_range("num_blocks", 2, top), "block_size": 1})
        return {
            "batch_size": hp.choice("batch_size", BATCH_SIZES),
            "learning_rate": hp.loguniform("learning_rate", math.log(1e-4), math.log(1.0)),
            "conv": branches[0] if len(branches) == 1 else hp.choice("conv", branches),
            **fcl_space(),
            "activation": hp.choice("activation", ACTIVATIONS),
            "optimizer": hp.choice("optimizer", OPTIMIZERS),
        }

    def _build(self, p, input_shape, num_classes, *, num_coarse_classes, weights):
        activation = p.activation()
        p.optimizer()
        num_blocks, block_size = conv_params(p)
        channels = input_shape[2]
        if channels not in (1, 3):
            raise ConfigError(f"vggstrix: needs grayscale or RGB images, got {channels} channels")
        extra = num_blocks * block_size
        size = vgg_output_size(input_shape)
        if size - 2 * extra < 1:
            raise ConfigError(
                f"vggstrix: {extra} extra 3x3 convolutions do not fit VGG19's {size}x{size} "
                f"output for {input_shape[0]}x{input_shape[1]} images "
                f"(at most {max(0, (size - 1) // 2)})"
            )
        weights_path = resolve_weights(weights)
        h, w = input_shape[:2]
        try:
            base = keras.applications.VGG19(include_top=False, weights=weights_path,
                                            input_shape=(h, w, 3))
        except (ValueError, OSError) as exc:
            raise ConfigError(f"vggstrix: cannot load VGG19 weights from {weights_path}: "
                              f"{_one_line(exc)[:300]}") from None
        base.trainable = False

        inputs, x = image_stem(input_shape, p.params)
        x = GrayscaleToRGB(name="to_rgb")(x)
        x = VGGPreprocess(name="vgg_preprocess")(x)
        x = base(x, training=False)
        init = kernel_initializer(activation)
        for i in range(num_blocks):
            for j in range(block_size):
                x = keras.layers.Conv2D(EXTRA_FILTERS, 3, padding="valid", activation=activation,
                                        kernel_initializer=init,
                                        name=f"extra{i + 1}_conv{j + 1}")(x)
            if i < num_blocks - 1:
                x = keras.layers.BatchNormalization(name=f"extra{i + 1}_bn")(x)
        return fcl_classifier(p, inputs, x, activation, num_classes, self.name)


register(VGGStrix())
