"""VGGStrix: adapter and preprocessing layers, frozen base, weight sources."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mongotune.errors import ConfigError
from mongotune.models.vggstrix import RANDOM


def _params():
    from mongotune.models import get_model

    return get_model("vggstrix").corners((32, 32, 1))[0]


def test_grayscale_input_is_adapted_and_the_base_is_frozen(zoo):
    import keras

    from mongotune.models import get_model

    vgg = get_model("vggstrix")
    params = _params()
    model = vgg.build(params, (32, 32, 1), 10, weights=RANDOM)
    assert model.input.dtype == "uint8" and tuple(model.input.shape) == (None, 32, 32, 1)
    assert tuple(model.get_layer("to_rgb").output.shape) == (None, 32, 32, 3)
    base = model.get_layer("vgg19")
    assert tuple(base.output.shape) == (None, 1, 1, 512)
    assert base.trainable is False and base.trainable_weights == []
    base_ids = {id(w) for w in base.weights}
    assert len(base_ids) == 32  # 16 convolutions, kernel + bias
    trainable_ids = {id(w) for w in model.trainable_weights}
    assert trainable_ids and not (trainable_ids & base_ids)
    head = [model.get_layer(n) for n in ("fcl_1", "output")]
    assert trainable_ids == {id(w) for layer in head for w in layer.trainable_weights}

    x, y = zoo.random_batch((32, 32, 1), 10)
    before = [w.numpy().copy() for w in base.weights]
    logs = zoo.train_one_step(vgg, model, params, x, y)
    assert math.isfinite(logs["loss"])
    for old, new in zip(before, base.weights):
        np.testing.assert_array_equal(old, new.numpy())
    assert isinstance(base, keras.Model)


def test_preprocessing_layers_match_keras_preprocess_input():
    import keras

    from mongotune.models import GrayscaleToRGB, VGGPreprocess

    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, size=(2, 5, 5, 1)).astype("float32")
    rgb = keras.ops.convert_to_numpy(GrayscaleToRGB()(gray))
    np.testing.assert_array_equal(rgb, np.repeat(gray, 3, axis=-1))
    color = rng.integers(0, 256, size=(2, 5, 5, 3)).astype("float32")
    ours = keras.ops.convert_to_numpy(VGGPreprocess(scale=255.0)(color / 255.0))
    theirs = keras.applications.vgg19.preprocess_input(color.copy())
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-3)


def test_extra_conv_block_on_a_larger_input():
    from mongotune.models import get_model

    vgg = get_model("vggstrix")
    params = {**_params(), "conv": {"num_blocks": 1, "block_size": 1}}
    model = vgg.build(params, (96, 96, 3), 7, weights=RANDOM)
    assert tuple(model.get_layer("vgg19").output.shape) == (None, 3, 3, 512)
    assert tuple(model.get_layer("extra1_conv1").output.shape) == (None, 1, 1, 512)
    assert tuple(model.output.shape) == (None, 7)


def test_weights_from_a_local_file(tmp_path):
    import keras

    from mongotune.models import get_model

    vgg = get_model("vggstrix")
    donor = keras.applications.VGG19(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "vgg19.weights.h5"
    donor.save_weights(str(path))
    model = vgg.build(_params(), (32, 32, 3), 10, weights=str(path))
    loaded = model.get_layer("vgg19").weights
    for ours, theirs in zip(loaded, donor.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    with pytest.raises(ConfigError, match="weights file not found"):
        vgg.build(_params(), (32, 32, 3), 10, weights=str(tmp_path / "missing.h5"))


def test_imagenet_weights_are_fetched_with_the_published_hash(monkeypatch, tmp_path):
    import keras

    from mongotune.models import get_model
    from mongotune.models import vggstrix

    donor = keras.applications.VGG19(include_top=False, weights=None, input_shape=(32, 32, 3))
    local = tmp_path / "cached.weights.h5"
    donor.save_weights(str(local))
    calls = []

    def fake_get_file(fname, origin, **kwargs):
        calls.append((fname, origin, kwargs))
        return str(local)

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    model = get_model("vggstrix").build(_params(), (32, 32, 3), 10, weights="imagenet")
    assert len(calls) == 1
    fname, origin, kwargs = calls[0]
    assert origin == vggstrix.IMAGENET_WEIGHTS_URL and origin.endswith(fname)
    assert kwargs["file_hash"] == "253f8cb515780f3b799900260a226db6"
    assert kwargs["cache_subdir"] == "models"
    np.testing.assert_array_equal(model.get_layer("vgg19").weights[0].numpy(),
                                  donor.weights[0].numpy())

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(ConfigError, match="--weights PATH"):
        get_model("vggstrix").build(_params(), (32, 32, 3), 10, weights="imagenet")
