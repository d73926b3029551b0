"""Online augmentation: layers chosen by params, RandomApply, saving/reloading."""

from __future__ import annotations

import numpy as np
import pytest
from hyperopt.pyll import stochastic

from mongotune.errors import ConfigError

AUG = {"aug_flip": True, "aug_crop": 0.2, "aug_rotate": 0.05, "aug_translate": 0.1}


def test_no_augmentation_unless_asked():
    from mongotune.models import augmentation_layers

    assert augmentation_layers({}) == []
    assert augmentation_layers({"aug_flip": False, "aug_crop": 0.0, "aug_rotate": None,
                                "aug_translate": 0, "aug_probability": 0.9}) == []
    assert augmentation_layers({**AUG, "aug_probability": 0.0}) == []


def test_layers_follow_the_params():
    import keras

    from mongotune.models import RandomApply, augmentation_layers

    layers = augmentation_layers(AUG)
    assert [type(layer).__name__ for layer in layers] == [
        "RandomFlip", "RandomZoom", "RandomRotation", "RandomTranslation"]
    assert [layer.name for layer in layers] == ["aug_flip", "aug_crop", "aug_rotate", "aug_translate"]
    wrapped = augmentation_layers({**AUG, "aug_probability": 0.3})
    assert all(isinstance(layer, RandomApply) and layer.probability == 0.3 for layer in wrapped)
    assert isinstance(wrapped[2].layer, keras.layers.RandomRotation)
    with pytest.raises(ConfigError, match="aug_rotate"):
        augmentation_layers({"aug_rotate": 2.0})
    with pytest.raises(ConfigError, match="aug_probability"):
        augmentation_layers({"aug_flip": True, "aug_probability": 1.5})


def test_random_apply_applies_per_image_with_the_given_probability():
    import keras

    from mongotune.models import RandomApply

    x = np.random.default_rng(0).random((256, 6, 6, 1)).astype("float32")
    mirror = x[:, :, ::-1]
    always = RandomApply(keras.layers.RandomFlip("horizontal"), 1.0, seed=1)
    never = RandomApply(keras.layers.RandomFlip("horizontal"), 0.0, seed=1)
    half = RandomApply(keras.layers.RandomFlip("horizontal"), 0.5, seed=1)
    for layer, low, high in ((always, 0.35, 0.65), (never, 0.0, 0.0), (half, 0.12, 0.40)):
        out = keras.ops.convert_to_numpy(layer(x, training=True))
        changed = (out != x).reshape(256, -1).any(axis=1)
        # every image is either untouched or exactly mirrored
        assert np.all(changed == np.isclose(out, mirror).reshape(256, -1).all(axis=1))
        assert low <= changed.mean() <= high, (layer.probability, changed.mean())
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), x)


def test_augmented_model_saved_and_reloaded_predicts_identically(tmp_path, zoo):
    import keras

    from mongotune.models import get_model

    conv = get_model("convstrix")
    params = {**conv.corners((8, 8, 1))[0], **AUG, "aug_probability": 0.5}
    model = conv.build(params, (8, 8, 1), 10)
    assert type(model.get_layer("aug_flip")).__name__ == "RandomApply"
    x, y = zoo.random_batch((8, 8, 1), 10)
    zoo.train_one_step(conv, model, params, x, y)

    # augmentation is active while training ...
    stem = keras.Model(model.input, model.get_layer("aug_translate").output)
    plain = keras.ops.convert_to_numpy(stem(x, training=False))
    np.testing.assert_allclose(plain, x.astype("float32") / 255.0, rtol=1e-6)
    trained_views = [keras.ops.convert_to_numpy(stem(x, training=True)) for _ in range(3)]
    assert any(not np.allclose(view, plain) for view in trained_views)

    # ... and gone at inference, also after a save/load round trip
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert type(reloaded.get_layer("aug_rotate")).__name__ == "RandomApply"
    assert reloaded.get_layer("aug_rotate").probability == 0.5
    first = model.predict(x, verbose=0)
    np.testing.assert_array_equal(first, model.predict(x, verbose=0))
    np.testing.assert_array_equal(first, reloaded.predict(x, verbose=0))
    assert reloaded.input.dtype == "uint8"


def test_augmentation_space_merges_into_any_model_space():
    from mongotune.models import augmentation_space, get_model, with_augmentation

    keys = {"aug_flip", "aug_crop", "aug_rotate", "aug_translate", "aug_probability"}
    assert set(augmentation_space()) == keys
    base = get_model("baseline").space((8, 8, 1))
    merged = with_augmentation(base)
    assert set(merged) == set(base) | keys
    assert set(get_model("baseline").space((8, 8, 1), augment=True)) == set(merged)
    # keys the user already set win
    fixed = with_augmentation({**base, "aug_flip": True})
    assert fixed["aug_flip"] is True
    rng = np.random.default_rng(7)
    samples = [stochastic.sample(merged, rng=rng) for _ in range(50)]
    assert {s["aug_flip"] for s in samples} == {False, True}
    assert any(s["aug_crop"] == 0.0 for s in samples) and any(s["aug_crop"] > 0 for s in samples)
    assert all(0.25 <= s["aug_probability"] <= 1.0 for s in samples)
    with pytest.raises(ConfigError):
        with_augmentation(["not", "a", "dict"])
    # corners of an augmented space build (all switches on and off)
    model_def = get_model("baseline")
    from mongotune.models._space import corners

    for params in corners(merged)[:3]:
        model_def.build(params, (8, 8, 1), 3)
