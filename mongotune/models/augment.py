"""Online data augmentation that lives inside the model.

Augmentation is switched on and tuned through ordinary hyper-parameters, so
any model's space can search over it:

``aug_flip``
    ``True`` flips images left-right at random.
``aug_crop``
    Fraction (0 = off) of the side that a random crop may cut away; the crop
    is resized back to the input size, so shapes do not change.
``aug_rotate``
    Largest rotation, as a fraction of a full turn (0 = off).
``aug_translate``
    Largest shift, as a fraction of height/width (0 = off).
``aug_probability``
    Probability that each augmentation is applied to a given image
    (default 1: always).

Every layer returned by :func:`augmentation_layers` is an identity at
inference, so an exported model predicts the same with or without them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
from hyperopt import hp

from mongotune.errors import ConfigError
from mongotune.models._common import Params

AUGMENTATION_KEYS = ("aug_flip", "aug_crop", "aug_rotate", "aug_translate", "aug_probability")


@keras.saving.register_keras_serializable(package="mongotune")
class RandomApply(keras.layers.Layer):
    """Apply the wrapped augmentation layer to each image with probability ``probability``.

    During training every image of the batch draws its own coin; images that
    lose the draw pass through unchanged.  At inference the layer returns its
    input.  The wrapped layer must keep the input shape.
    """

    def __init__(self, layer, probability: float = 0.5, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(layer, Mapping):
            layer = keras.saving.deserialize_keras_object(layer)
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(f"RandomApply wraps a keras layer, got {type(layer).__name__}")
        probability = float(probability)
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must lie in [0, 1], got {probability}")
        self.layer = layer
        self.probability = probability
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        if not training or self.probability == 0.0:
            return inputs
        augmented = self.layer(inputs, training=True)
        if self.probability == 1.0:
            return augmented
        batch = keras.ops.shape(inputs)[0]
        draw_shape = (batch,) + (1,) * (len(inputs.shape) - 1)
        draw = keras.random.uniform(draw_shape, seed=self.seed_generator)
        keep = keras.ops.less(draw, self.probability)
        return keras.ops.where(keep, keras.ops.cast(augmented, inputs.dtype), inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            layer=keras.saving.serialize_keras_object(self.layer),
            probability=self.probability,
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        return cls(**config)


def _fraction(p: Params, key: str, high: float) -> float:
    value = p.raw(key, None)
    if value is None or value is False:
        return 0.0
    return p.as_float(key, value, 0.0, high)


def augmentation_layers(params: Mapping[str, Any]) -> list[keras.layers.Layer]:
    """The augmentation layers ``params`` asks for (possibly none), in order
    flip, crop, rotate, translate."""
    p = Params("augmentation", params)
    flip = p.raw("aug_flip", None)
    flip = False if flip is None else p.bool("aug_flip")
    crop = _fraction(p, "aug_crop", 0.9)
    rotate = _fraction(p, "aug_rotate", 0.5)
    translate = _fraction(p, "aug_translate", 0.9)
    prob_raw = p.raw("aug_probability", None)
    probability = 1.0 if prob_raw is None else p.as_float("aug_probability", prob_raw, 0.0, 1.0)

    if probability == 0.0:
        return []
    wrap = probability < 1.0
    sfx = "_op" if wrap else ""
    ops: list[keras.layers.Layer] = []
    if flip:
        ops.append(keras.layers.RandomFlip("horizontal", name="aug_flip" + sfx))
    if crop > 0:
        # zooming in by up to `crop` = cropping a random window and resizing
        # it back, which keeps the image size
        ops.append(keras.layers.RandomZoom(height_factor=(-crop, 0.0), name="aug_crop" + sfx))
    if rotate > 0:
        ops.append(keras.layers.RandomRotation(rotate, name="aug_rotate" + sfx))
    if translate > 0:
        ops.append(
            keras.layers.RandomTranslation(translate, translate, name="aug_translate" + sfx)
        )
    if wrap:
        ops = [RandomApply(op, probability, name=op.name[: -len(sfx)]) for op in ops]
    return ops


def augmentation_space() -> dict:
    """A hyperopt sub-space over the ``aug_*`` keys; merge it into any model's space."""
    return {
        "aug_flip": hp.choice("aug_flip", [False, True]),
        "aug_crop": hp.choice("aug_crop_on", [0.0, hp.uniform("aug_crop", 0.05, 0.25)]),
        "aug_rotate": hp.choice("aug_rotate_on", [0.0, hp.uniform("aug_rotate", 0.01, 0.08)]),
        "aug_translate": hp.choice(
            "aug_translate_on", [0.0, hp.uniform("aug_translate", 0.02, 0.15)]
        ),
        "aug_probability": hp.uniform("aug_probability", 0.25, 1.0),
    }


def with_augmentation(space: Mapping[str, Any]) -> dict:
    """``space`` plus :func:`augmentation_space`; keys ``space`` already has win."""
    if not isinstance(space, Mapping):
        raise ConfigError(
            f"augmentation can only be added to a dict space, got {type(space).__name__}"
        )
    merged = {k: v for k, v in augmentation_space().items() if k not in space}
    merged.update(space)
    return merged
