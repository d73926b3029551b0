"""``convstrix``: a small VGG-like network trained from scratch.

``num_blocks`` blocks of ``block_size`` 3x3 convolutions ("same" padding);
block *i* (from 0) has ``32 * (i + 1)`` filters.  Every block except the last
is followed by batch normalisation and 2x2 max pooling, so the image is
halved ``num_blocks - 1`` times.  A fully connected head (``fcl_*``) with
dropout and a softmax layer follow.

The space depends on the image size: ``num_blocks`` is capped so that the
poolings never shrink the feature map below 1x1 (8x8 digits allow at most 4
blocks).  Images smaller than 28x28 get a small-input space: the same
convolutions, a narrower head and learning rates up to 1e-2.
"""

from __future__ import annotations

import math

import keras
from hyperopt import hp

from mongotune.errors import ConfigError
from mongotune.models._common import dense_head, image_stem, int_range, kernel_initializer, softmax_output
from mongotune.models._registry import ModelDef, register

BATCH_SIZES = [16, 32, 64]
FCL_SIZES = [512, 768, 1024, 1536]
ACTIVATIONS = ["relu", "selu", "tanh"]
OPTIMIZERS = ["adam", "adamax", "nadam", "rmsprop"]
MIN_BLOCKS, MAX_BLOCKS = 2, 6
FILTERS_STEP = 32

#: Images whose smaller side is below this use the small-input space.
SMALL_INPUT_SIDE = 28
#: The small-input space keeps the seed's convolutional part and narrows the
#: fully connected head and the learning rate: on 8x8 digits the seed's head
#: (up to 4 x 1,536 units) dwarfs the convolutions, and learning rates above
#: 1e-2 leave many trials at chance.
SMALL_FCL_SIZES = [64, 128, 256]
SMALL_FCL_MAX_LAYERS = 2
SMALL_LEARNING_RATES = (1e-4, 1e-2)


def max_poolings(size: int) -> int:
    """How many 2x2 poolings (floor division) keep a side of ``size`` >= 1."""
    return int(math.floor(math.log2(size))) if size >= 1 else -1


def fcl_space(sizes=FCL_SIZES, max_layers: int = 4) -> dict:
    """The fully connected head's dimensions, shared with VGGStrix."""
    return {
        "fcl_num_layers": int_range("fcl_num_layers", 1, max_layers),
        "fcl_layer_size": hp.choice("fcl_layer_size", list(sizes)),
        "fcl_dropout_rate": hp.quniform("fcl_dropout_rate", 0.05, 0.5, 0.05),
    }


def build_fcl(p, x, activation):
    num_layers = p.int("fcl_num_layers", 0, 64)
    units = p.int("fcl_layer_size", 1)
    dropout = p.float("fcl_dropout_rate", 0.0, 1.0, high_open=True)
    return dense_head(x, num_layers=num_layers, units=units, dropout=dropout,
                      activation=activation, prefix="fcl")


def fcl_classifier(p, inputs, x, activation, num_classes: int, name: str):
    """The fully connected head (which flattens) and the softmax on top of a trunk."""
    x = build_fcl(p, x, activation)
    return keras.Model(inputs, softmax_output(x, num_classes), name=name)


class ConvStrix(ModelDef):
    name = "convstrix"
    description = "VGG-style convolutional blocks trained from scratch + dense head"
    min_input_size = 2  # two blocks need one pooling

    def max_blocks(self, input_shape) -> int:
        return min(MAX_BLOCKS, max_poolings(min(input_shape[:2])) + 1)

    def _space(self, input_shape):
        top = self.max_blocks(input_shape)
        return {
            "batch_size": hp.choice("batch_size", BATCH_SIZES),
            "learning_rate": hp.loguniform("learning_rate", math.log(1e-4), math.log(1.0)),
            "num_blocks": int_range("num_blocks", MIN_BLOCKS, top),
            "block_size": int_range("block_size", 1, 3),
            **fcl_space(),
            "activation": hp.choice("activation", ACTIVATIONS),
            "optimizer": hp.choice("optimizer", OPTIMIZERS),
        }

    def is_small_input(self, input_shape):
        return min(input_shape[:2]) < SMALL_INPUT_SIDE

    def _small_space(self, input_shape):
        top = self.max_blocks(input_shape)
        low, high = SMALL_LEARNING_RATES
        return {
            "batch_size": hp.choice("batch_size", BATCH_SIZES),
            "learning_rate": hp.loguniform("learning_rate", math.log(low), math.log(high)),
            "num_blocks": int_range("num_blocks", MIN_BLOCKS, top),
            "block_size": int_range("block_size", 1, 3),
            **fcl_space(SMALL_FCL_SIZES, SMALL_FCL_MAX_LAYERS),
            "activation": hp.choice("activation", ACTIVATIONS),
            "optimizer": hp.choice("optimizer", OPTIMIZERS),
        }

    def _build(self, p, input_shape, num_classes, *, num_coarse_classes, weights):
        activation = p.activation()
        num_blocks = p.int("num_blocks", 1)
        block_size = p.int("block_size", 1)
        p.optimizer()
        h, w = input_shape[:2]
        if num_blocks - 1 > max_poolings(min(h, w)):
            raise ConfigError(
                f"convstrix: num_blocks={num_blocks} pools {num_blocks - 1} times, which "
                f"needs images of at least {2 ** (num_blocks - 1)}x{2 ** (num_blocks - 1)}; "
                f"got {h}x{w} (at most {self.max_blocks(input_shape)} blocks)"
            )
        init = kernel_initializer(activation)
        inputs, x = image_stem(input_shape, p.params)
        for i in range(num_blocks):
            filters = FILTERS_STEP * (i + 1)
            for j in range(block_size):
                x = keras.layers.Conv2D(filters, 3, padding="same", activation=activation,
                                        kernel_initializer=init,
                                        name=f"block{i + 1}_conv{j + 1}")(x)
            if i < num_blocks - 1:
                x = keras.layers.BatchNormalization(name=f"block{i + 1}_bn")(x)
                x = keras.layers.MaxPooling2D(2, name=f"block{i + 1}_pool")(x)
        return fcl_classifier(p, inputs, x, activation, num_classes, self.name)


register(ConvStrix())
