"""``baseline``: a plain fully connected network.

The pixels are flattened and fed through ``num_layers`` dense layers of
``layer_size`` units, each followed by dropout.  It is the yardstick the
convolutional models have to beat and the fastest way to exercise the whole
pipeline.

Two spaces: the seed's (Fashion-MNIST resized to 128x128) and, for inputs
smaller than 28x28 values (8x8 digits), a small one that learns there.
"""

from __future__ import annotations

import math

import keras
from hyperopt import hp
from hyperopt.pyll import scope

from mongotune.models._common import dense_head, image_stem, int_range, softmax_output
from mongotune.models._registry import ModelDef, register

BATCH_SIZES = [16, 32, 64, 128]
LAYER_SIZES = [512, 768, 1024, 1536]
ACTIVATIONS = ["relu", "selu", "tanh"]
OPTIMIZERS = ["adam", "adamax", "nadam", "rmsprop"]
MAX_LAYERS = 16

#: Inputs with fewer values than a 28x28 grayscale image use the small space.
SMALL_INPUT_VALUES = 28 * 28
#: The small-input space: a few narrow layers and learning rates an MLP of
#: that size trains with.  The seed's space (up to 16 layers of 1,536 units,
#: learning rates up to 1) builds 3-21 M parameter networks on 8x8 digits and
#: half of those stay at chance.
SMALL_BATCH_SIZES = [16, 32, 64]
SMALL_LAYER_SIZES = [64, 128, 256]
SMALL_MAX_LAYERS = 3
SMALL_LEARNING_RATES = (5e-4, 3e-2)


class Baseline(ModelDef):
    name = "baseline"
    description = "fully connected network (MLP) on the flattened pixels"
    min_input_size = 1

    def _space(self, input_shape):
        return {
            "batch_size": hp.choice("batch_size", BATCH_SIZES),
            "learning_rate": hp.loguniform("learning_rate", math.log(1e-4), math.log(1.0)),
            "dropout_rate": hp.quniform("dropout_rate", 0.05, 0.5, 0.05),
            "activation": hp.choice("activation", ACTIVATIONS),
            # quantised in steps of two: 0 (a linear softmax model), 2, ..., 16
            "num_layers": scope.int(hp.quniform("num_layers", 1, MAX_LAYERS, 2)),
            "layer_size": hp.choice("layer_size", LAYER_SIZES),
            "optimizer": hp.choice("optimizer", OPTIMIZERS),
        }

    def is_small_input(self, input_shape):
        h, w, c = input_shape
        return h * w * c < SMALL_INPUT_VALUES

    def _small_space(self, input_shape):
        low, high = SMALL_LEARNING_RATES
        return {
            "batch_size": hp.choice("batch_size", SMALL_BATCH_SIZES),
            "learning_rate": hp.loguniform("learning_rate", math.log(low), math.log(high)),
            "dropout_rate": hp.quniform("dropout_rate", 0.0, 0.3, 0.05),
            "activation": hp.choice("activation", ACTIVATIONS),
            "num_layers": int_range("num_layers", 1, SMALL_MAX_LAYERS),
            "layer_size": hp.choice("layer_size", SMALL_LAYER_SIZES),
            "optimizer": hp.choice("optimizer", OPTIMIZERS),
        }

    def _build(self, p, input_shape, num_classes, *, num_coarse_classes, weights):
        activation = p.activation()
        num_layers = p.int("num_layers", 0, 64)
        units = p.int("layer_size", 1)
        dropout = p.float("dropout_rate", 0.0, 1.0, high_open=True)
        p.optimizer()  # validated here so a bad name fails before training

        inputs, x = image_stem(input_shape, p.params)
        x = dense_head(x, num_layers=num_layers, units=units, dropout=dropout,
                       activation=activation, prefix="dense")
        if num_layers == 0 and len(x.shape) > 2:
            x = keras.layers.Flatten(name="flatten")(x)
        outputs = softmax_output(x, num_classes)
        return keras.Model(inputs, outputs, name=self.name)


register(Baseline())
