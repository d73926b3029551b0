"""``hyperresnet``: the network's architecture is itself a hyper-parameter.

Built for CIFAR-100 (fine and coarse labels) but usable on any dataset.  The
search decides, among other things:

* an optional special first convolution (none, kernel 3 or 4);
* 2 or 3 conv + pool stages, stage *i* with ``32 * 2**i * width_mult`` filters
  and kernels of ``conv_kernel_size`` (2-4);
* optional residual units (1-4 per stage, kernel ``res_conv_kernel_size``)
  in every stage from ``res_start_stage`` on (clamped to the last stage);
* how to downsample: ``max`` / ``avg`` pooling, ``all_conv`` (a strided
  convolution) or ``inception`` (max pooling and a strided convolution side
  by side, concatenated);
* batch normalisation on/off, activation relu/elu, L2 decay
  (``1e-4 * l2_weight_reg_mult``), dropout after each stage and in the
  fully connected part, an optional second fully connected layer;
* optimizer, batch size, and a learning rate multiplier on a base of 1e-3;
* the seed's random left-right flip (``aug_flip``).

Images smaller than 32x32 get a small-input space: no flip, batches of 16-128
instead of the seed's 100-700.

With ``num_coarse_classes`` the model has two softmax outputs, ``fine`` and
``coarse``; the coarse loss is weighted by ``coarse_labels_weight``.  Without
it there is one output named ``output``.
"""

from __future__ import annotations

from typing import Any

import keras
from hyperopt import hp
from hyperopt.pyll import scope

from mongotune.models._common import Params, image_stem, softmax_output
from mongotune.models._registry import _UNSET, ModelDef, register
from mongotune.models.convstrix import int_range

BASE_LEARNING_RATE = 1e-3
BASE_FILTERS = 32
BASE_FC_UNITS = 512
BASE_L2 = 1e-4
POOLING_TYPES = ["max", "avg", "all_conv", "inception"]
OPTIMIZERS = ["adam", "nadam", "rmsprop"]
ACTIVATIONS = ["relu", "elu"]
#: (low, high, q) of the batch size: the seed's, and for small inputs
SEED_BATCH_SIZES = (100, 700, 5)
SMALL_BATCH_SIZES = (16, 128, 16)
#: Images whose smaller side is below this (CIFAR's 32) use the small space.
SMALL_INPUT_SIDE = 32


class HyperResNet(ModelDef):
    name = "hyperresnet"
    description = ("architecture-as-hyper-parameters CNN (residual units, pooling type, ...) "
                   "with optional fine + coarse heads")
    min_input_size = 8

    def is_small_input(self, input_shape):
        return min(input_shape[:2]) < SMALL_INPUT_SIDE

    def _space(self, input_shape):
        return {
            # the seed's only pre-processing: a random left-right flip
            "aug_flip": True,
            **self._common_space(),
            "batch_size": scope.int(hp.quniform("batch_size", *SEED_BATCH_SIZES)),
        }

    def _small_space(self, input_shape):
        # no flip (small inputs such as digits are not mirror-symmetric) and
        # batches that give a small training set enough steps per epoch
        return {**self._common_space(),
                "batch_size": scope.int(hp.quniform("batch_size", *SMALL_BATCH_SIZES))}

    def _common_space(self):
        return {
            "learning_rate": BASE_LEARNING_RATE,
            "lr_rate_mult": hp.loguniform("lr_rate_mult", -0.5, 0.5),
            "l2_weight_reg_mult": hp.loguniform("l2_weight_reg_mult", -1.3, 1.3),
            "optimizer": hp.choice("optimizer", OPTIMIZERS),
            "coarse_labels_weight": hp.uniform("coarse_labels_weight", 0.1, 0.7),
            "conv_dropout": hp.uniform("conv_dropout", 0.0, 0.35),
            "fc_dropout": hp.uniform("fc_dropout", 0.0, 0.6),
            "use_batch_norm": hp.choice("use_batch_norm", [False, True]),
            "first_conv": hp.choice("first_conv", [None, hp.choice("first_conv_size", [3, 4])]),
            "residual_units": hp.choice("residual", [None, int_range("residual_units", 1, 4)]),
            "res_start_stage": int_range("res_start_stage", 0, 2),
            "width_mult": hp.loguniform("width_mult", -0.6, 0.6),
            "num_stages": hp.choice("num_stages", [2, 3]),
            "pooling": hp.choice("pooling", POOLING_TYPES),
            "conv_kernel_size": int_range("conv_kernel_size", 2, 4),
            "res_conv_kernel_size": int_range("res_conv_kernel_size", 2, 4),
            "fc_units_mult": hp.loguniform("fc_units_mult", -0.6, 0.6),
            "second_fc": hp.choice("second_fc", [None, hp.loguniform("fc2_units_mult", -0.6, 0.6)]),
            "activation": hp.choice("activation", ACTIVATIONS),
        }

    # -- outputs ---------------------------------------------------------------

    def _two_heads(self, params, num_coarse_classes) -> bool:
        if num_coarse_classes is not _UNSET:
            return num_coarse_classes is not None
        built = self._recalled_heads(params)
        if built is not None:
            return "coarse" in built
        return params.get("coarse_labels_weight") is not None

    def output_names(self, params, *, num_coarse_classes: Any = _UNSET) -> list[str]:
        """``['fine', 'coarse']`` for the two-headed model, else ``['output']``.

        Whether there are two heads is decided at build time by
        ``num_coarse_classes``; pass the same value here.  Left out, the
        answer is that of the last model built from an equal params dict, and
        failing that, a ``coarse_labels_weight`` in params means two heads.
        """
        if self._two_heads(params, num_coarse_classes):
            return ["fine", "coarse"]
        return ["output"]

    def loss_weights(self, params, *, num_coarse_classes: Any = _UNSET):
        if not self._two_heads(params, num_coarse_classes):
            return None
        p = Params(self.name, params)
        return {"fine": 1.0, "coarse": p.float("coarse_labels_weight", 0.0)}

    def learning_rate(self, params) -> float:
        p = Params(self.name, params)
        base = p.float("learning_rate", 0.0, default=BASE_LEARNING_RATE, low_open=True)
        mult = p.float("lr_rate_mult", 0.0, default=1.0, low_open=True)
        return base * mult

    # -- build -------------------------------------------------------------------

    def _build(self, p, input_shape, num_classes, *, num_coarse_classes, weights):
        activation = p.choice("activation", ACTIVATIONS)
        p.optimizer()
        use_bn = p.bool("use_batch_norm")
        first_conv = p.raw("first_conv", None)
        first_conv = None if first_conv is None else p.as_int("first_conv", first_conv, 1, 7)
        residual = p.raw("residual_units", None)
        residual = None if residual is None else p.as_int("residual_units", residual, 0, 16)
        num_stages = p.int("num_stages", 1, 5)
        res_start = min(p.int("res_start_stage", 0, default=0), num_stages - 1)
        pooling = p.choice("pooling", POOLING_TYPES)
        kernel = p.int("conv_kernel_size", 1, 7)
        res_kernel = p.int("res_conv_kernel_size", 1, 7)
        width = p.float("width_mult", 0.0, low_open=True)
        fc_mult = p.float("fc_units_mult", 0.0, low_open=True)
        fc2 = p.raw("second_fc", None)
        fc2 = None if fc2 is None else p.as_float("second_fc", fc2, 0.0, low_open=True)
        conv_drop = p.float("conv_dropout", 0.0, 1.0, high_open=True)
        fc_drop = p.float("fc_dropout", 0.0, 1.0, high_open=True)
        l2 = BASE_L2 * p.float("l2_weight_reg_mult", 0.0, default=1.0)
        if num_coarse_classes is not None:
            p.float("coarse_labels_weight", 0.0)

        reg = keras.regularizers.L2(l2) if l2 > 0 else None

        def conv(x, filters, size, name, strides=1):
            return keras.layers.Conv2D(filters, size, strides=strides, padding="same",
                                       use_bias=not use_bn, kernel_regularizer=reg,
                                       name=name)(x)

        def norm_act(x, name):
            if use_bn:
                x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
            return keras.layers.Activation(activation, name=f"{name}_act")(x)

        def units(base, mult):
            return max(1, int(round(base * mult)))

        inputs, x = image_stem(input_shape, p.params)
        if first_conv is not None:
            x = conv(x, units(BASE_FILTERS, width), first_conv, "first_conv")
            x = norm_act(x, "first_conv")

        for i in range(num_stages):
            filters = units(BASE_FILTERS * 2 ** i, width)
            stage = f"stage{i + 1}"
            x = conv(x, filters, kernel, f"{stage}_conv")
            x = norm_act(x, f"{stage}_conv")
            if residual and i >= res_start:
                for u in range(residual):
                    unit = f"{stage}_res{u + 1}"
                    y = conv(x, filters, res_kernel, f"{unit}_conv1")
                    y = norm_act(y, f"{unit}_conv1")
                    y = conv(y, filters, res_kernel, f"{unit}_conv2")
                    x = keras.layers.Add(name=f"{unit}_add")([x, y])
                    x = norm_act(x, f"{unit}_out")
            x = _downsample(x, pooling, filters, stage, conv, norm_act)
            if conv_drop > 0:
                x = keras.layers.Dropout(conv_drop, name=f"{stage}_dropout")(x)

        x = keras.layers.Flatten(name="flatten")(x)
        fc_layers = [units(BASE_FC_UNITS, fc_mult)]
        if fc2 is not None:
            fc_layers.append(units(BASE_FC_UNITS, fc2))
        for k, n in enumerate(fc_layers):
            x = keras.layers.Dense(n, kernel_regularizer=reg, use_bias=not use_bn,
                                   name=f"fc{k + 1}")(x)
            x = norm_act(x, f"fc{k + 1}")
            if fc_drop > 0:
                x = keras.layers.Dropout(fc_drop, name=f"fc{k + 1}_dropout")(x)

        if num_coarse_classes is None:
            outputs = softmax_output(x, num_classes, "output", kernel_regularizer=reg)
        else:
            outputs = {
                "fine": softmax_output(x, num_classes, "fine", kernel_regularizer=reg),
                "coarse": softmax_output(x, num_coarse_classes, "coarse", kernel_regularizer=reg),
            }
        return keras.Model(inputs, outputs, name=self.name)


def _downsample(x, pooling, filters, stage, conv, norm_act):
    """Halve the feature map ("same" padding: odd sizes round up, 1x1 stays 1x1)."""
    name = f"{stage}_pool"
    if pooling == "max":
        return keras.layers.MaxPooling2D(2, padding="same", name=name)(x)
    if pooling == "avg":
        return keras.layers.AveragePooling2D(2, padding="same", name=name)(x)
    if pooling == "all_conv":
        return norm_act(conv(x, filters, 3, name, strides=2), name)
    # inception-like: both reductions side by side
    pooled = keras.layers.MaxPooling2D(2, padding="same", name=f"{name}_max")(x)
    strided = norm_act(conv(x, filters, 3, f"{name}_conv", strides=2), f"{name}_conv")
    return keras.layers.Concatenate(name=name)([pooled, strided])


register(HyperResNet())
